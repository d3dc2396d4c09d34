/**
 * LLMPhiAgent: RusticAI's `LLMPhiAgent`, on a local Phi-2 GGUF through PhiModel (never native code
 * directly). It loads the model once when the guild starts it, shares it between all requests —
 * concurrent requests go straight to `model.generate()`, which decodes them together — and
 * disposes it when the guild shuts down.
 *
 * Every GenerationPromptRequest gets exactly one reply with `in_response_to` set to its id: a
 * GenerationPromptResponse, or an ErrorMessage (invalid payload, empty prompt, prompt longer than
 * the context, generation failure, model not loaded). The agent keeps serving afterwards.
 */
import { ContextOverflowError, InvalidStateError, isArgumentError } from "../errors.js";
import { Agent, type AgentSpec, type ProcessContext } from "../guild/agent.js";
import type { AgentEvent, GuildEvent } from "../guild/events.js";
import { ErrorMessage, GenerationPromptRequest, GenerationPromptResponse } from "../messages/formats.js";
import { PhiModel } from "../model/PhiModel.js";
import { checkText } from "../model/options.js";
import type { GenerateOptions, LoadOptions, ModelInfo } from "../model/types.js";
import { PhiAgentProps } from "./PhiAgentProps.js";

/** The `data` of LLMPhiAgent's agent events (GuildEvent `type: "agent_event"`), by `name`. */
export interface PhiAgentEventData {
    /** Model load progress, 0..1. */
    model_load_progress: { progress: number };
    model_loaded: { info: ModelInfo; loadMs: number };
    /** The model could not be loaded (the event's `error` says why); requests are answered with a ModelLoadError. */
    model_load_failed: { error: Error };
    model_disposed: Record<string, never>;
}
export type PhiAgentEventName = keyof PhiAgentEventData;

/** Whether `event` is LLMPhiAgent's agent event `name`; narrows its `data`. */
export function isPhiAgentEvent<N extends PhiAgentEventName>(event: GuildEvent, name: N): event is AgentEvent & { name: N; data: PhiAgentEventData[N] } {
    return event.type === "agent_event" && event.name === name;
}

export class LLMPhiAgent extends Agent<PhiAgentProps> {
    /** Validates the properties in AgentBuilder.buildSpec(). */
    static readonly Props = PhiAgentProps;

    readonly #props: PhiAgentProps;
    #model: PhiModel | undefined;
    #loading: Promise<PhiModel> | undefined;
    #loadError: Error | undefined;

    constructor(spec: AgentSpec<PhiAgentProps>) {
        super(spec);
        // a spec built by AgentBuilder holds a PhiAgentProps already; a hand-made one is checked here
        this.#props = spec.properties instanceof PhiAgentProps ? spec.properties : PhiAgentProps.from(spec.properties);
        this.handle(GenerationPromptRequest, (ctx) => this.#generate(ctx));
    }

    override get props(): PhiAgentProps {
        return this.#props;
    }

    /** The loaded model (undefined before it has loaded, after shutdown, or when loading failed). */
    get model(): PhiModel | undefined {
        return this.#model;
    }

    /** Why the model could not be loaded, if it could not. */
    get loadError(): Error | undefined {
        return this.#loadError;
    }

    /** Resolves with the model once loaded; rejects with the load error. */
    async ready(): Promise<PhiModel> {
        if (this.#model) return this.#model;
        if (this.#loadError) throw this.#loadError;
        if (!this.#loading) throw new InvalidStateError(`LLMPhiAgent "${this.id}" has not been started; launch its guild first`);
        return this.#loading;
    }

    /** Loads the model; a subclass may override it (e.g. to share one model between agents). */
    protected loadModel(options: LoadOptions): Promise<PhiModel> {
        return PhiModel.load(options);
    }

    protected override async onStart(): Promise<void> {
        const props = this.#props;
        const started = Date.now();
        this.log("info", `loading model ${props.modelPath} (device ${props.device}, context ${props.contextSize})`);
        const options = props.toLoadOptions({
            signal: this.stopSignal,
            onProgress: (progress) => this.#emit("model_load_progress", { progress }, `loading model: ${Math.round(progress * 100)}%`),
        });
        this.#loading = (async () => this.loadModel(options))();
        try {
            const model = await this.#loading;
            this.#model = model;
            const loadMs = Date.now() - started;
            const { info } = model;
            this.#emit("model_loaded", { info, loadMs }, `model loaded in ${loadMs} ms: ${info.name || info.architecture} ` +
                `(${info.quantization}) on ${info.runtime.device}, context ${info.runtime.contextSize}`);
        } catch (err) {
            // Not fatal to the guild: each request is answered with an ErrorMessage saying why.
            this.#loadError = err instanceof Error ? err : new Error(String(err));
            this.#emit("model_load_failed", { error: this.#loadError }, `model failed to load: ${this.#loadError.message}`, this.#loadError);
        }
    }

    protected override async onStop(): Promise<void> {
        const model = this.#model;
        this.#model = undefined;
        if (model) {
            await model.dispose();
            this.#emit("model_disposed", {}, "model disposed");
        }
    }

    #emit<N extends PhiAgentEventName>(name: N, data: PhiAgentEventData[N], text: string, error?: Error): void {
        this.emitAgentEvent(name, data, error ? { text, error } : { text });
    }

    async #generate(ctx: ProcessContext<GenerationPromptRequest>): Promise<void> {
        const request = ctx.payload;
        const prompt = request.generation_prompt;
        if (prompt.length === 0) {
            ctx.sendError(this.#invalid("generation_prompt must not be empty; send the text the model should continue"));
            return;
        }
        try {
            checkText("generation_prompt", prompt, { allowEmpty: false }); // a NUL or lone surrogate, named as the request's field
        } catch (err) {
            ctx.sendError(this.#invalid((err as Error).message));
            return;
        }
        const model = this.#model;
        if (!model) {
            const cause = this.#loadError ?? new Error("the model is not loaded (the agent is stopping)");
            const causeCode = (cause as { code?: unknown }).code;
            ctx.sendError(ErrorMessage.create({
                agent_type: this.agentType,
                error_type: "ModelLoadError",
                error_message: `The model ${JSON.stringify(this.#props.modelPath)} could not be loaded, so no text can be generated: ${cause.message}`,
                code: typeof causeCode === "string" ? causeCode : "ERR_LOAD_FAILED",
            }));
            return;
        }
        const props = this.#props;
        try {
            // the seed's max_length counts the prompt: budget = maxLength - prompt tokens (at least 1, as transformers does)
            const promptTokens = model.tokenize(prompt).length;
            const maxTokens = request.max_tokens ?? props.maxNewTokens ?? Math.max(1, props.maxLength - promptTokens);
            const options: GenerateOptions = { maxTokens, temperature: request.temperature ?? props.temperature, signal: ctx.signal };
            const topK = request.top_k ?? props.topK;
            const topP = request.top_p ?? props.topP;
            const seed = request.seed ?? props.seed;
            const stop = request.stop ?? props.stop;
            if (topK !== undefined) options.topK = topK;
            if (topP !== undefined) options.topP = topP;
            if (seed !== undefined) options.seed = seed;
            if (props.repeatPenalty !== undefined) options.repeatPenalty = props.repeatPenalty;
            if (stop.length > 0) options.stop = [...stop];
            // typed output: the request's schema, else the agent's; generated_response is then the JSON alone
            const jsonSchema = request.json_schema ?? props.jsonSchema;
            if (jsonSchema !== undefined) options.jsonSchema = jsonSchema;

            const result = await model.generate(prompt, options);
            if (jsonSchema !== undefined && result.json === undefined) {
                ctx.sendError(ErrorMessage.create({
                    agent_type: this.agentType,
                    error_type: "IncompleteOutputError",
                    error_message: `The JSON response was cut short (finish reason "${result.finishReason}") after ${result.usage.completionTokens} tokens, before the document was complete; ` +
                        `raise max_tokens (or the agent's maxNewTokens / maxLength)`,
                    code: "ERR_OUTPUT_INCOMPLETE",
                    details: { finish_reason: result.finishReason, partial_response: result.text, completion_tokens: result.usage.completionTokens },
                }));
                return;
            }
            ctx.send(GenerationPromptResponse.create({
                generation_prompt: prompt,
                generated_response: props.includePrompt && jsonSchema === undefined ? prompt + result.text : result.text,
                finish_reason: result.finishReason,
                usage: {
                    prompt_tokens: result.usage.promptTokens,
                    completion_tokens: result.usage.completionTokens,
                    total_tokens: result.usage.promptTokens + result.usage.completionTokens,
                    prompt_ms: result.usage.promptMs,
                    generation_ms: result.usage.generationMs,
                },
            }));
        } catch (err) {
            ctx.sendError(this.#errorFor(err));
        }
    }

    /** The ErrorMessage payload for a failure of tokenize()/generate(). */
    #errorFor(err: unknown): ErrorMessage {
        if (err instanceof ContextOverflowError) {
            return ErrorMessage.create({
                agent_type: this.agentType,
                error_type: "ContextOverflowError",
                error_message: `The prompt is ${err.promptTokens} tokens but the context holds ${err.contextSize}; ` +
                    `shorten generation_prompt, or give the agent a larger contextSize (PhiAgentProps) if the model supports it`,
                code: err.code,
                details: { prompt_tokens: err.promptTokens, context_size: err.contextSize },
            });
        }
        // argument checks of PhiModel (ERR_INVALID_ARGUMENT) are the request's fault
        if (isArgumentError(err)) return this.#invalid(err.message);
        const e = err instanceof Error ? err : new Error(String(err));
        const code = (e as { code?: unknown }).code;
        const payload: ErrorMessage = {
            agent_type: this.agentType,
            error_type: e.name === "PhiAgentError" ? "GenerationError" : e.name || "GenerationError",
            error_message: `Generation failed: ${e.message}`,
        };
        if (typeof code === "string") payload.code = code;
        return ErrorMessage.create(payload);
    }

    #invalid(message: string): ErrorMessage {
        return ErrorMessage.create({
            agent_type: this.agentType,
            error_type: "ValidationError",
            error_message: `Invalid GenerationPromptRequest: ${message}`,
            code: "ERR_INVALID_ARGUMENT",
        });
    }
}
