/**
 * `npm run bench:prefix`: the prompt cache (LoadOptions.promptCacheSize) on phi2 Q4_K_M (random weights, the real
 * geometry). One request sequence — a warm-up call, then a ~1500-token shared preamble with a 20-token suffix, first
 * cold, then with other suffixes — through PhiModel, and through llama.cpp's llama-server (`cache_prompt: true`,
 * one slot) over HTTP on loopback, with the same token ids, threads and batch size. Prompt time is the time to the
 * first token: the engine's usage.promptMs, and llama-server's timings.prompt_ms. Also: what cached cells cost an
 * unrelated call (decode speed with the preamble cached and without). See bench/README.md.
 *
 *   node dist/scripts/bench-prefix.js [--llama-server PATH] [--threads N] [--preamble 1500] [--suffix 20]
 *                                     [--warm 3] [--type q4_k_m] [--shape phi2] [--no-span] [--json out.json]
 *
 * Run benches one at a time: flock "$BENCH_LOCK" npm run bench:prefix -- --llama-server PATH (any lock file).
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { PhiModel } from "../src/index.js";
import { defaultThreads } from "../src/native/binding.js";
import { ensureTestModel, TEST_MODEL_SHAPES, TEST_MODEL_TYPES, type TestModelShape, type TestModelType } from "../src/testModel/makeTestModel.js";
import { LOAD_DEFAULTS } from "../src/model/options.js";
import { choiceFlag, intFlag, scriptArgs, UsageError } from "./args.js";
import { buildPrompt, cpuSnapshot, fmtMs, fmtRatio, foreignLoad, median, ownCpuMs, repoRoot, waitForQuiet } from "./bench-lib/common.js";

const USAGE = `usage: node dist/scripts/bench-prefix.js [--llama-server PATH] [--threads N] [--preamble TOKENS] [--suffix TOKENS]
                                         [--warm N] [--type q4_k_m|q8_0|f16|f32] [--shape phi2|tiny] [--no-span] [--json FILE]`;

interface Options {
    llamaServer?: string;
    threads: number;
    preamble: number;
    suffix: number;
    warm: number;
    type: TestModelType;
    shape: TestModelShape;
    span: boolean;
    json?: string;
}

const options: Options = scriptArgs("bench-prefix", USAGE, {
    "llama-server": { type: "string" },
    threads: { type: "string" },
    preamble: { type: "string" },
    suffix: { type: "string" },
    warm: { type: "string" },
    type: { type: "string" },
    shape: { type: "string" },
    "no-span": { type: "boolean" },
    json: { type: "string" },
}, (v) => {
    const o: Options = {
        threads: v.threads === undefined ? defaultThreads() : intFlag("threads", v.threads, 1, 1024)!,
        preamble: v.preamble === undefined ? 1500 : intFlag("preamble", v.preamble, 16, 1900)!,
        suffix: v.suffix === undefined ? 20 : intFlag("suffix", v.suffix, 1, 100)!,
        warm: v.warm === undefined ? 3 : intFlag("warm", v.warm, 1, 50)!,
        type: v.type === undefined ? "q4_k_m" : choiceFlag("type", v.type, TEST_MODEL_TYPES)!,
        shape: v.shape === undefined ? "phi2" : choiceFlag("shape", v.shape, TEST_MODEL_SHAPES)!,
        span: v["no-span"] !== true,
    };
    if (v["llama-server"] !== undefined) {
        if (!fs.existsSync(v["llama-server"])) throw new UsageError(`--llama-server ${v["llama-server"]}: no such file (build it: node scripts/build-llama-server.mjs)`);
        o.llamaServer = path.resolve(v["llama-server"]);
    }
    if (v.json !== undefined) o.json = v.json;
    if (o.preamble + o.suffix + 8 > 2048) throw new UsageError("--preamble + --suffix must leave room in the 2048-token context");
    return o;
});

const CONTEXT = 2048;
const BATCH = LOAD_DEFAULTS.batchSize;
const log = (s: string) => process.stderr.write(`bench-prefix: ${s}\n`);

interface Row {
    what: string;
    promptTokens: number;
    cachedTokens: number;
    promptMs: number;
    wallMs: number;
    busy: number; // share of the CPUs other processes used meanwhile
}

interface Side {
    name: string;
    warmup: Row;
    cold: Row;
    warm: Row[];
}

async function timed<T>(f: () => Promise<T>): Promise<{ value: T; wallMs: number; busy: number }> {
    const a = cpuSnapshot(), own = ownCpuMs(), t0 = performance.now();
    const value = await f();
    const wallMs = performance.now() - t0;
    return { value, wallMs, busy: foreignLoad(a, cpuSnapshot(), ownCpuMs() - own, os.availableParallelism()) };
}

// ---- the prompts: the same token ids on both sides ----

const modelPath = await ensureTestModel({ shape: options.shape, type: options.type, seed: 1, onProgress: (f, label) => log(`writing the test model: ${label} ${(f * 100).toFixed(0)}%`) });
log(`model ${path.relative(process.cwd(), modelPath)}, ${options.threads} thread(s)`);

// ---- ours ----

async function runOurs(): Promise<{ side: Side; span?: { emptyTokS: number; cachedTokS: number; cachedCells: number } }> {
    const model = await PhiModel.load({ modelPath, device: "cpu", threads: options.threads, contextSize: CONTEXT, batchSize: BATCH });
    try {
        const preamble = buildPrompt((t) => model.tokenize(t), options.preamble, 0);
        const suffixes = Array.from({ length: options.warm + 1 }, (_, i) => buildPrompt((t) => model.tokenize(t), options.suffix, 11 + 7 * i));
        const prompts = suffixes.map((s) => `${preamble.text}\n${s.text}`);
        const warmupText = buildPrompt((t) => model.tokenize(t), 16, 5).text;
        ids.warmup = model.tokenize(warmupText);
        ids.requests = prompts.map((p) => model.tokenize(p));
        const one = async (what: string, text: string): Promise<Row> => {
            const { value: r, wallMs, busy } = await timed(() => model.generate(text, { maxTokens: 1 }));
            const row = { what, promptTokens: r.usage.promptTokens, cachedTokens: r.usage.cachedPromptTokens, promptMs: r.usage.promptMs, wallMs, busy };
            log(`ours ${what}: ${row.promptTokens} prompt tokens (${row.cachedTokens} cached), prompt ${fmtMs(row.promptMs)}, call ${fmtMs(wallMs)}`);
            return row;
        };
        const side: Side = { name: "ours (PhiModel)", warmup: await one("warm-up", warmupText), cold: await one("cold", prompts[0]!), warm: [] };
        for (let i = 1; i < prompts.length; i++) side.warm.push(await one(`warm ${i}`, prompts[i]!));
        if (!options.span) return { side };
        // What cached cells cost others: an unrelated call decodes while the preamble's cells are cached (they
        // widen every attention), then with the cache emptied (a fresh model with promptCacheSize 0).
        const unrelated = buildPrompt((t) => model.tokenize(t), 16, 3).text;
        const cachedCells = model.stats().cachedCells;
        const decode = async (m: PhiModel) => {
            await m.generate(unrelated, { maxTokens: 2 });
            const r = await m.generate(unrelated + " and", { maxTokens: 32 });
            return (r.tokens.length - 1) / (r.usage.generationMs / 1000);
        };
        const cachedTokS = await decode(model);
        await model.dispose();
        const empty = await PhiModel.load({ modelPath, device: "cpu", threads: options.threads, contextSize: CONTEXT, batchSize: BATCH, promptCacheSize: 0 });
        try {
            const emptyTokS = await decode(empty);
            log(`ours decode of an unrelated call: ${emptyTokS.toFixed(2)} tok/s with an empty cache, ${cachedTokS.toFixed(2)} tok/s with ${cachedCells} cached cells`);
            return { side, span: { emptyTokS, cachedTokS, cachedCells } };
        } finally {
            await empty.dispose();
        }
    } finally {
        await model.dispose();
    }
}

const ids: { warmup: number[]; requests: number[][] } = { warmup: [], requests: [] };

// ---- llama-server ----

function freePort(): Promise<number> {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.listen(0, "127.0.0.1", () => {
            const port = (s.address() as net.AddressInfo).port;
            s.close(() => resolve(port));
        });
        s.on("error", reject);
    });
}

async function runLlamaServer(bin: string, name: string, extra: string[]): Promise<Side> {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // One slot (the requests come one after the other), the same context, batch, threads and flash attention, and
    // cache_prompt on. By default it also keeps prompts in RAM (--cache-ram, idle slots saved there on a new task);
    // the second run turns that off (-cram 0: the slot's own KV only). The better of the two is the baseline.
    const child: ChildProcess = spawn(bin, ["-m", modelPath, "--host", "127.0.0.1", "--port", String(port), "-t", String(options.threads),
        "-tb", String(options.threads), "-np", "1", "-c", String(CONTEXT), "-b", String(BATCH), "-ub", String(BATCH), "-ngl", "0",
        "-fa", LOAD_DEFAULTS.flashAttention, "--no-webui", ...extra], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr = (stderr + d).slice(-4000)));
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    try {
        for (let tries = 0; ; tries++) {
            if (child.exitCode !== null) throw new Error(`llama-server exited (${child.exitCode}): ${stderr.slice(-1500)}`);
            const ok = await fetch(`${url}/health`).then((r) => r.status === 200, () => false);
            if (ok) break;
            if (tries > 1200) throw new Error(`llama-server was not healthy after 5 minutes: ${stderr.slice(-1500)}`);
            await new Promise((r) => setTimeout(r, 250));
        }
        const one = async (what: string, prompt: number[]): Promise<Row> => {
            const { value: body, wallMs, busy } = await timed(async () => {
                const res = await fetch(`${url}/completion`, {
                    method: "POST",
                    headers: { "content-type": "application/json" },
                    body: JSON.stringify({ prompt, n_predict: 1, temperature: 0, cache_prompt: true }),
                });
                if (res.status !== 200) throw new Error(`llama-server /completion: HTTP ${res.status} ${await res.text()}`);
                return (await res.json()) as { timings: { prompt_n: number; prompt_ms: number; cache_n?: number }; tokens_cached?: number };
            });
            const t = body.timings;
            const cached = t.cache_n ?? prompt.length - t.prompt_n;
            const row = { what, promptTokens: prompt.length, cachedTokens: cached, promptMs: t.prompt_ms, wallMs, busy };
            log(`${name} ${what}: ${row.promptTokens} prompt tokens (${row.cachedTokens} cached), prompt ${fmtMs(row.promptMs)}, request ${fmtMs(wallMs)}`);
            return row;
        };
        const side: Side = { name, warmup: await one("warm-up", ids.warmup), cold: await one("cold", ids.requests[0]!), warm: [] };
        for (let i = 1; i < ids.requests.length; i++) side.warm.push(await one(`warm ${i}`, ids.requests[i]!));
        return side;
    } finally {
        if (child.exitCode === null) {
            child.kill("SIGTERM");
            const kill = setTimeout(() => child.kill("SIGKILL"), 30_000);
            await exited;
            clearTimeout(kill);
        }
    }
}

// ---- run ----

const warmMs = (s: Side) => median(s.warm.map((r) => r.promptMs));
const quiet = async (what: string) => {
    const busy = await waitForQuiet(0.25, 120_000, (b) => log(`waiting for other processes to quiet down before ${what} (${(b * 100).toFixed(0)}% of the CPUs busy)`));
    if (busy >= 0.25) log(`other processes keep ${(busy * 100).toFixed(0)}% of the CPUs busy: numbers are noisy`);
};

await quiet("ours");
const ours = await runOurs();
let llama: Side | undefined;
const llamaRuns: Side[] = [];
if (options.llamaServer) {
    await quiet("llama-server");
    llamaRuns.push(await runLlamaServer(options.llamaServer, "llama-server (cache_prompt)", []));
    await quiet("llama-server -cram 0");
    llamaRuns.push(await runLlamaServer(options.llamaServer, "llama-server -cram 0", ["-cram", "0"]));
    llama = llamaRuns.reduce((a, b) => (warmMs(b) < warmMs(a) ? b : a));
} else {
    log("no --llama-server PATH: the llama-server comparison is skipped (node scripts/build-llama-server.mjs builds one)");
}

const sides = [ours.side, ...llamaRuns];
const lines: string[] = [];
const n = ids.requests[0]!.length;
const shared = Math.min(...ids.requests.slice(1).map((r) => { let i = 0; while (i < r.length && r[i] === ids.requests[0]![i]) i++; return i; }));
lines.push(`prompt cache: ${options.shape} ${options.type} (random weights), ${n}-token prompts sharing ${shared} tokens (${options.preamble}-token preamble + ${options.suffix}-token suffix), ${options.threads} thread(s), batch ${BATCH}`);
lines.push("");
lines.push(`${"".padEnd(30)}${"cold prompt".padStart(14)}${`warm prompt (median of ${options.warm})`.padStart(30)}${"cold / warm".padStart(14)}${"cached tokens".padStart(16)}${"other load".padStart(12)}`);
for (const s of sides) {
    const busy = Math.max(s.cold.busy, ...s.warm.map((r) => r.busy));
    lines.push(`${s.name.padEnd(30)}${fmtMs(s.cold.promptMs).padStart(14)}${fmtMs(warmMs(s)).padStart(30)}${fmtRatio(s.cold.promptMs / warmMs(s)).padStart(14)}` +
        `${String(median(s.warm.map((r) => r.cachedTokens))).padStart(16)}${(Number.isFinite(busy) ? `${(busy * 100).toFixed(0)}%` : "?").padStart(12)}`);
}
if (llama) {
    lines.push("");
    lines.push(`warm prompt, ${llama.name} (the faster llama-server) / ours: ${fmtRatio(warmMs(llama) / warmMs(ours.side))} (above 1: ours is ahead); ` +
        `warm call end to end: ours ${fmtMs(median(ours.side.warm.map((r) => r.wallMs)))}, llama-server request ${fmtMs(median(llama.warm.map((r) => r.wallMs)))}`);
}
if (ours.span) {
    lines.push(`decode of an unrelated call (32 tokens): ${ours.span.emptyTokS.toFixed(2)} tok/s with no cached cells, ` +
        `${ours.span.cachedTokS.toFixed(2)} tok/s with ${ours.span.cachedCells} cached cells (${fmtRatio(ours.span.cachedTokS / ours.span.emptyTokS)})`);
}
process.stdout.write(lines.join("\n") + "\n");

const result = { options, modelPath: path.relative(repoRoot(), modelPath), promptTokens: n, sharedTokens: shared, ours: ours.side, llamaServer: llamaRuns, span: ours.span, at: new Date().toISOString() };
const out = options.json ?? path.join(repoRoot(), "bench", "results", `prefix-${options.shape}-${options.type}-${Date.now()}.json`);
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, JSON.stringify(result, null, 2) + "\n");
log(`raw numbers: ${path.relative(process.cwd(), out)}`);
