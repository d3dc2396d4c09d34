/**
 * Chat messages → one prompt. With the GGUF's `tokenizer.chat_template`, the template renders them (Jinja, by
 * @huggingface/jinja); without one, Phi-2's own form (src/prompt/phi2.ts: `Instruct: …\nOutput:` for one user
 * turn, `User:`/`Assistant:` turns otherwise, with its stop strings). llama.cpp has no phi2 template and would fall
 * back to ChatML, which Phi-2 was never trained on.
 */
import { Template } from "@huggingface/jinja";
import { formatPhi2Chat, type Phi2ChatMessage } from "../prompt/phi2.js";
import { ApiError, notSupported } from "./errors.js";

export interface ChatMessageIn {
    role: string;
    content?: string | { type: string; text?: string }[] | null;
    images?: string[] | null;
}

export interface ChatPrompt {
    prompt: string;
    /** Stop strings the format needs (Phi-2's form); none for a GGUF template (its end token is EOS). */
    stop: string[];
}

/** A compiled chat template, or the Phi-2 form. */
export class ChatFormatter {
    readonly #template: Template | undefined;
    readonly #bos: string;
    readonly #eos: string;
    /** Why the GGUF's template is not used (it did not parse), for the startup log. */
    readonly problem: string | undefined;

    constructor(template: string | undefined, tokens: { bos?: string; eos?: string } = {}) {
        this.#bos = tokens.bos ?? "";
        this.#eos = tokens.eos ?? "";
        let compiled: Template | undefined;
        let problem: string | undefined;
        if (template !== undefined && template.trim() !== "") {
            try {
                compiled = new Template(template);
            } catch (err) {
                problem = `the GGUF's tokenizer.chat_template does not parse (${(err as Error).message}); using the Phi-2 chat form`;
            }
        }
        this.#template = compiled;
        this.problem = problem;
    }

    /** "gguf" when the GGUF's chat template is used, "phi2" for the Phi-2 form. */
    get source(): "gguf" | "phi2" {
        return this.#template ? "gguf" : "phi2";
    }

    /** `param` is the request field holding the messages ("messages"). */
    format(messages: readonly ChatMessageIn[], param = "messages"): ChatPrompt {
        const plain: Phi2ChatMessage[] = messages.map((m, i) => ({ role: checkRole(m.role, `${param}[${i}].role`), content: textOf(m, `${param}[${i}]`) }));
        if (this.#template) {
            try {
                const prompt = this.#template.render({
                    messages: plain, add_generation_prompt: true, bos_token: this.#bos, eos_token: this.#eos,
                });
                return { prompt, stop: [] };
            } catch (err) {
                throw new ApiError(400, "invalid_value", `The model's chat template refused these messages: ${(err as Error).message}`, { param });
            }
        }
        try {
            return formatPhi2Chat(plain);
        } catch (err) {
            throw new ApiError(400, "invalid_value", (err as Error).message, { param });
        }
    }
}

function checkRole(role: string, param: string): Phi2ChatMessage["role"] {
    if (role === "system" || role === "developer" || role === "user" || role === "assistant") return role;
    if (role === "tool" || role === "function") throw notSupported(param, `"${param}" is "${role}": tool and function calling are not supported by this server`);
    throw new ApiError(400, "invalid_value", `"${param}" is ${JSON.stringify(role)}; allowed: "system", "developer", "user" or "assistant"`, { param });
}

function textOf(m: ChatMessageIn, param: string): string {
    if (m.images && m.images.length > 0) throw notSupported(`${param}.images`, `"${param}.images": Phi-2 reads text only; images are not supported`);
    const c = m.content;
    if (c === undefined || c === null) return "";
    if (typeof c === "string") return c;
    return c.map((part, j) => {
        if (part.type !== "text" || typeof part.text !== "string") {
            throw notSupported(`${param}.content[${j}]`, `"${param}.content[${j}]" is a "${part.type}" part; Phi-2 reads text only: send { type: "text", text } parts`);
        }
        return part.text;
    }).join("");
}
