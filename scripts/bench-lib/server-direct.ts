/**
 * bench:server worker: PhiModel direct, in its own process, loaded with the options the server gets. It stays up
 * and runs one streamed generation per line of JSON on stdin ({ prompt, maxTokens }), answering each with one
 * "@@result" line, so that the runner can alternate it with the servers' runs. It times model.stream() chunks on
 * the JS clock as the HTTP client times SSE chunks (first to last chunk with text).
 */
import readline from "node:readline";
import { performance } from "node:perf_hooks";
import { PhiModel } from "../../src/model/PhiModel.js";
import { readJob, reportResult } from "./common.js";

export interface DirectJob {
    modelPath: string;
    threads: number;
    sequences: number;
    contextSize: number;
}

export interface DirectRun {
    ttftMs: number;
    decodeMs: number;
    tokens: number;
    chunks: number;
}

const job = readJob<DirectJob>();
const model = await PhiModel.load({ modelPath: job.modelPath, threads: job.threads, sequences: job.sequences, contextSize: job.contextSize, promptCacheSize: 0 });
await model.generate("warm up", { maxTokens: 4 });
reportResult({ ready: true });
for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const { prompt, maxTokens } = JSON.parse(line) as { prompt: string; maxTokens: number };
    const sent = performance.now();
    let first = 0;
    let last = 0;
    let chunks = 0;
    const stream = model.stream(prompt, { maxTokens });
    for await (const chunk of stream) {
        if (!chunk.text) continue;
        const now = performance.now();
        if (!first) first = now;
        last = now;
        chunks++;
    }
    const r = await stream.result;
    reportResult({ ttftMs: first - sent, decodeMs: last - first, tokens: r.usage.completionTokens, chunks } satisfies DirectRun);
}
await model.dispose();
