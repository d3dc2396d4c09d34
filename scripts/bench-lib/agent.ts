/**
 * Concurrency rows through the agent: N GenerationPromptRequests published at once to an LLMPhiAgent in a guild
 * (the agent shares one PhiModel between requests, which decodes them together), replies collected by a probe.
 */
import { performance } from "node:perf_hooks";
import { LLMPhiAgent, PhiAgentProps } from "../../src/agent/index.js";
import { AgentBuilder, GuildBuilder } from "../../src/guild/index.js";
import { ErrorMessage, GenerationPromptRequest, GenerationPromptResponse } from "../../src/messages/index.js";
import type { LoadOptions } from "../../src/model/types.js";
import type { PhiModel } from "../../src/model/PhiModel.js";
import type { BuiltPrompt } from "./common.js";
import type { ConcurrentRound, OursConcurrentJob } from "./worker-ours.js";

/** LLMPhiAgent with the bench's load options (--no-repack, --no-threadpool, --flash-attn) forced. */
function agentWith(overrides: Partial<LoadOptions>): typeof LLMPhiAgent {
    return class extends LLMPhiAgent {
        protected override loadModel(options: LoadOptions): Promise<PhiModel> {
            return super.loadModel({ ...options, ...overrides });
        }
    };
}

export async function runAgentConcurrency(
    prompts: BuiltPrompt[],
    job: OursConcurrentJob,
    contextSize: number,
    progress: (s: string) => void,
): Promise<ConcurrentRound[]> {
    const maxLevel = Math.max(...job.levels);
    const spec = new AgentBuilder(agentWith({
        ...(job.repack === false ? { repack: false } : {}),
        ...(job.threadpool === false ? { threadpool: false } : {}),
        ...(job.flashAttention !== undefined ? { flashAttention: job.flashAttention } : {}),
        promptCacheSize: 0, // the rows measure prompt processing: repeated prompts must not come from the prompt cache
    }))
        .setId("phi_bench")
        .setName("Phi-2 bench")
        .setDescription("LLMPhiAgent under npm run bench")
        .setProperties(new PhiAgentProps({
            modelPath: job.modelPath,
            device: "cpu",
            threads: job.threads,
            sequences: maxLevel,
            contextSize,
            temperature: 0,
            includePrompt: false,
        }))
        .buildSpec();
    progress("ours (agent): launching the guild and loading the model");
    const guild = await new GuildBuilder("bench_guild").addAgentSpec(spec).launch();
    try {
        const agent = guild.agent<LLMPhiAgent>("phi_bench");
        if (!agent) throw new Error("the guild has no agent phi_bench");
        await agent.ready();
        const client = guild.client("bench_client");
        const probe = await guild.probe();

        const ask = async (p: BuiltPrompt) => {
            const sent = client.publish("default_topic", GenerationPromptRequest.create({
                generation_prompt: p.text, max_tokens: job.genTokens, temperature: 0,
            }));
            const reply = await probe.waitForReply(sent, 20 * 60 * 1000);
            if (reply.format !== GenerationPromptResponse.format) {
                const e = ErrorMessage.parse(reply.payload);
                throw new Error(`the agent answered ${e.error_type}: ${e.error_message}`);
            }
            const r = GenerationPromptResponse.parse(reply.payload);
            if (!r.usage || r.usage.generation_ms === undefined) throw new Error("the agent's reply carries no usage.generation_ms");
            return { completion: r.usage.completion_tokens, generationMs: r.usage.generation_ms, finish: r.finish_reason ?? "?" };
        };

        // warm-up through the whole path
        await Promise.all(prompts.slice(0, maxLevel).map(ask));

        const rounds: ConcurrentRound[] = [];
        for (const level of job.levels) {
            for (let rep = 0; rep < job.repeat; rep++) {
                progress(`ours (agent): ${level} concurrent request(s), run ${rep + 1}/${job.repeat}`);
                const t0 = performance.now();
                const rs = await Promise.all(prompts.slice(0, level).map(ask));
                const wallMs = performance.now() - t0;
                const gen = Math.max(...rs.map((r) => r.generationMs));
                const decoded = rs.reduce((s, r) => s + Math.max(0, r.completion - 1), 0);
                rounds.push({
                    level,
                    wallMs,
                    aggregateTokS: gen > 0 ? decoded / (gen / 1000) : NaN,
                    e2eTokS: rs.reduce((s, r) => s + r.completion, 0) / (wallMs / 1000),
                    completionTokens: rs.map((r) => r.completion),
                    finishReasons: rs.map((r) => r.finish),
                });
            }
        }
        return rounds;
    } finally {
        await guild.shutdown();
    }
}
