/**
 * Bench worker for node-llama-cpp's LlamaCompletion on the same GGUF, threads and prebuilt libraries. Own process:
 *   node dist/scripts/bench-lib/worker-nlc.js '<job json>'
 * Greedy (temperature 0, repeat penalty off), history cleared before every run so no prompt tokens are reused.
 * Timed from JS: time to first token, and decode rate from the first to the last token seen by onToken.
 */
import { performance } from "node:perf_hooks";
import { getLlama, LlamaCompletion, LlamaLogLevel } from "node-llama-cpp";
import { ownCpuMs, peakRssKb, readJob, reportProgress, reportResult, type RunTiming, type SingleSideResult } from "./common.js";

export interface NlcSingleJob {
    modelPath: string;
    threads: number;
    contextSize: number;
    batchSize: number;
    flashAttention: boolean | "auto";
    /** Prompt texts keyed by token length, in measuring order; the first one is the decode measurement. */
    prompts: { n: number; text: string; maxTokens: number }[];
    repeat: number;
}

async function main(job: NlcSingleJob): Promise<SingleSideResult> {
    const notes: string[] = [];
    reportProgress("node-llama-cpp: loading (cold)");
    let t0 = performance.now();
    const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: job.threads });
    const getLlamaMs = performance.now() - t0;
    const load = async () => {
        const model = await llama.loadModel({ modelPath: job.modelPath, gpuLayers: 0 });
        const context = await model.createContext({
            contextSize: job.contextSize,
            threads: job.threads,
            batchSize: job.batchSize,
            sequences: 1,
            flashAttention: job.flashAttention,
        });
        return { model, context };
    };
    let m = await load();
    const loadColdMs = performance.now() - t0;
    await m.context.dispose();
    await m.model.dispose();
    reportProgress("node-llama-cpp: loading (warm)");
    t0 = performance.now();
    m = await load();
    const loadWarmMs = performance.now() - t0;
    const { model, context } = m;
    const sequence = context.getSequence();
    const completion = new LlamaCompletion({ contextSequence: sequence });
    const bos = model.tokens.shouldPrependBosToken ? 1 : 0;

    const once = async (text: string, maxTokens: number) => {
        await sequence.clearHistory();
        const got: number[] = [];
        let first = NaN;
        let last = NaN;
        const start = performance.now();
        const res = await completion.generateCompletionWithMeta(text, {
            maxTokens,
            temperature: 0,
            repeatPenalty: false,
            onToken(tokens) {
                const now = performance.now();
                if (!got.length) first = now;
                last = now;
                for (const t of tokens) got.push(t as number);
            },
        });
        const end = performance.now();
        const promptTokens = model.tokenize(text).length + bos;
        const timing: RunTiming = {
            promptTokens,
            completionTokens: got.length,
            promptMs: first - start,
            ttftMs: first - start,
            decodeTokS: got.length > 1 ? (got.length - 1) / ((last - first) / 1000) : NaN,
            finishReason: res.metadata.stopReason === "maxTokens" ? "length" : String(res.metadata.stopReason),
            wallMs: end - start,
        };
        return { timing, tokens: got };
    };

    // warm-up, like the other sides
    reportProgress("node-llama-cpp: warm-up");
    await once(job.prompts[0]!.text.split(" ").slice(0, 8).join(" "), 4);

    const runs: Record<string, RunTiming[]> = {};
    let tokens: number[] = [];
    for (let rep = 0; rep < job.repeat; rep++) {
        for (const [i, p] of job.prompts.entries()) {
            reportProgress(`node-llama-cpp: ${p.n}-token prompt + ${p.maxTokens} tokens, run ${rep + 1}/${job.repeat}`);
            const { timing, tokens: got } = await once(p.text, p.maxTokens);
            (runs[String(p.n)] ??= []).push(timing);
            if (i === 0 && rep === 0) tokens = got;
            if (timing.completionTokens !== p.maxTokens) {
                notes.push(`node-llama-cpp generated ${timing.completionTokens}/${p.maxTokens} tokens (${timing.finishReason}) on the ${p.n}-token prompt`);
            }
        }
    }
    if (bos) notes.push("node-llama-cpp prepends BOS to completions of this model (one more prompt token)");
    await context.dispose();
    await model.dispose();
    await llama.dispose();
    return {
        side: "nlc",
        loadColdMs,
        loadWarmMs,
        runs,
        tokens,
        peakRssKb: peakRssKb(),
        cpuMs: ownCpuMs(),
        notes,
        extra: { getLlamaMs, flashAttention: job.flashAttention },
    };
}

try {
    reportResult(await main(readJob<NlcSingleJob>()));
} catch (err) {
    console.error((err as Error).stack ?? String(err));
    process.exitCode = 1;
}
