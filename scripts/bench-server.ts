/**
 * `npm run bench:server`: phi-agent serve against PhiModel direct and against llama.cpp's own llama-server, side by
 * side in one run, on the same GGUF, threads and slots, every server driven by the same client code
 * (scripts/bench-lib/sse-client.ts: streaming POST /v1/completions).
 *
 *   node dist/scripts/bench-server.js [--shapes tiny,phi2] [--threads N] [--parallel S] [--levels 1,8]
 *                                     [--tokens N] [--rounds R] [--llama-server PATH] [--no-llama] [--json FILE]
 *
 * Rows, per shape (the project's random-weight Q4_K_M test models, ensureTestModel):
 *  - single stream decode tok/s: (tokens − 1) / time from the first to the last text chunk: PhiModel.stream() in
 *    its own process (JS clock) against our server over HTTP (client clock), and llama-server over HTTP;
 *  - time to first token over HTTP (request sent → first text chunk), idle server, 32-token prompt;
 *  - aggregate tok/s with 1 and 8 concurrent streams (distinct 32-token prompts): all tokens / wall time from the
 *    first request sent to the last chunk, prompts included.
 * Greedy; prompts whose greedy continuation runs the whole budget on our side (checked); llama-server gets
 * ignore_eos so it generates the same count; neither side reuses a prompt (ours --prompt-cache-size 0, llama-server
 * cache_prompt: false and --cache-ram 0).
 * Rounds alternate which server goes first; the table shows the best of the rounds (and the median in the JSON).
 * Wrap it in `flock` with the other benches (bench/README.md). llama-server: `node scripts/build-llama-server.mjs`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { PhiModel } from "../src/model/PhiModel.js";
import { ensureTestModel, TEST_MODEL_SHAPES, type TestModelShape } from "../src/testModel/makeTestModel.js";
import { intFlag, listFlag, scriptArgs } from "./args.js";
import { best, buildPrompt, fmtRate, fmtRatio, median, repoRoot, startLineWorker, waitForQuiet } from "./bench-lib/common.js";
import type { DirectJob, DirectRun } from "./bench-lib/server-direct.js";
import { closeClient, getStatus, streamCompletion, type StreamTiming } from "./bench-lib/sse-client.js";

const root = repoRoot();
const usage = `node dist/scripts/bench-server.js [--shapes tiny,phi2] [--threads N] [--parallel S] [--levels 1,8] [--tokens N] [--rounds R] [--llama-server PATH] [--no-llama] [--json FILE]`;
const opts = scriptArgs("bench-server", usage, {
    shapes: { type: "string" }, threads: { type: "string" }, parallel: { type: "string" }, levels: { type: "string" },
    tokens: { type: "string" }, rounds: { type: "string" }, "llama-server": { type: "string" }, "no-llama": { type: "boolean" },
    json: { type: "string" },
}, (v) => ({
    shapes: listFlag("shapes", v.shapes, TEST_MODEL_SHAPES) ?? (["tiny", "phi2"] as TestModelShape[]),
    threads: intFlag("threads", v.threads, 1, 1024) ?? 2,
    parallel: intFlag("parallel", v.parallel, 1, 256) ?? 8,
    levels: (listFlag("levels", v.levels) ?? ["1", "8"]).map((x) => intFlag("levels", x, 1, 256)!),
    tokens: intFlag("tokens", v.tokens, 2, 4096),
    rounds: intFlag("rounds", v.rounds, 1, 100),
    llamaServer: v["llama-server"] ?? path.join(root, "deps", "llama-server", "build", "bin", "llama-server"),
    llama: v["no-llama"] !== true,
    json: v.json,
}));

const CONTEXT = 2048;
const PROMPT_TOKENS = 32;
const t0 = Date.now();
const log = (s: string) => process.stderr.write(`bench-server [${((Date.now() - t0) / 1000).toFixed(1)} s]: ${s}\n`);

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

async function waitHealthy(url: string, child: ChildProcess, what: string, tail: () => string): Promise<void> {
    const deadline = Date.now() + 300_000;
    for (;;) {
        if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode}): ${tail()}`);
        if ((await getStatus(`${url}/health`)) === 200) return;
        if (Date.now() > deadline) throw new Error(`${what} was not healthy after 300 s: ${tail()}`);
        await new Promise((r) => setTimeout(r, 250));
    }
}

interface RunningServer { url: string; child: ChildProcess; stop: () => Promise<void> }

function spawnServer(cmd: string, args: string[], what: string): { child: ChildProcess; tail: () => string; stdout: () => string } {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (out = (out + d).slice(-20_000)));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (err = (err + d).slice(-4_000)));
    void what;
    return { child, tail: () => err.slice(-1500), stdout: () => out };
}

const stopper = (child: ChildProcess) => async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const t = setTimeout(() => child.kill("SIGKILL"), 30_000);
    await exited;
    clearTimeout(t);
};

/** KV cells for `parallel` streams of a 32-token prompt and `tokens` tokens each (both servers get this total). */
const kvCells = (parallel: number, tokens: number) => parallel * Math.ceil((PROMPT_TOKENS + tokens + 16) / 256) * 256;

async function startOurs(model: string, threads: number, parallel: number, cells: number): Promise<RunningServer> {
    const s = spawnServer(process.execPath, [path.join(root, "dist", "src", "cli", "main.js"), "serve", "--model", model, "--port", "0",
        "--threads", String(threads), "--parallel", String(parallel), "--context-size", String(CONTEXT), "--kv-cache-size", String(Math.max(cells, CONTEXT)), "--max-queue", "256", "--name", "m", "--prompt-cache-size", "0"], "phi-agent serve");
    const url = await new Promise<string>((resolve, reject) => {
        const check = () => {
            const m = /listening on (http:\/\/\S+)/.exec(s.stdout());
            if (m) return resolve(m[1]!);
            if (s.child.exitCode !== null) return reject(new Error(`phi-agent serve exited: ${s.tail()}`));
            setTimeout(check, 50);
        };
        check();
    });
    await waitHealthy(url, s.child, "phi-agent serve", s.tail);
    return { url, child: s.child, stop: stopper(s.child) };
}

async function startLlama(bin: string, model: string, threads: number, parallel: number, cells: number): Promise<RunningServer> {
    const port = await freePort();
    const s = spawnServer(bin, ["-m", model, "--host", "127.0.0.1", "--port", String(port), "-t", String(threads), "-tb", String(threads),
        "-np", String(parallel), "-c", String(cells), "-b", "512", "-ub", "512", "-ngl", "0", "--no-webui", "-cram", "0"], "llama-server");
    const url = `http://127.0.0.1:${port}`;
    await waitHealthy(url, s.child, "llama-server", s.tail);
    return { url, child: s.child, stop: stopper(s.child) };
}

/** The PhiModel-direct worker: one process, one run per request line. */
async function startDirect(job: DirectJob): Promise<{ run: (prompt: string, maxTokens: number) => Promise<DirectRun>; stop: () => Promise<void> }> {
    const worker = await startLineWorker(path.join(root, "dist", "scripts", "bench-lib", "server-direct.js"), job);
    return { run: (prompt, maxTokens) => worker.ask<DirectRun>({ prompt, maxTokens }), stop: () => worker.stop() };
}

/** Waits (at most 20 s) for the machine to be quiet; returns the other processes' share of the CPU. */
async function quiet(): Promise<number> {
    return waitForQuiet(0.15, 20_000, (busy) => log(`waiting for a quiet machine (others use ${(busy * 100).toFixed(0)}% of the CPU)`));
}

interface LevelResult { level: number; aggregateTokS: number; meanTtftMs: number; tokens: number; wallMs: number }

async function concurrent(url: string, prompts: string[], level: number, tokens: number): Promise<LevelResult> {
    const body = (p: string) => ({ model: "m", prompt: p, max_tokens: tokens, temperature: 0, cache_prompt: false, ignore_eos: true });
    const runs: StreamTiming[] = await Promise.all(prompts.slice(0, level).map((p) => streamCompletion(url, body(p))));
    const start = Math.min(...runs.map((r) => r.sentAt));
    const end = Math.max(...runs.map((r) => r.lastAt));
    const total = runs.reduce((a, r) => a + r.tokens, 0);
    return { level, aggregateTokS: (total * 1000) / (end - start), meanTtftMs: runs.reduce((a, r) => a + r.ttftMs, 0) / runs.length, tokens: total, wallMs: end - start };
}

const decodeRate = (r: { tokens: number; decodeMs: number }) => (r.tokens > 1 && r.decodeMs > 0 ? ((r.tokens - 1) * 1000) / r.decodeMs : NaN);

interface ShapeResult {
    shape: TestModelShape;
    model: string;
    tokens: number;
    direct: { decode: number[]; ttft: number[] };
    ours: { decode: number[]; ttft: number[]; levels: LevelResult[][] };
    llama?: { decode: number[]; ttft: number[]; levels: LevelResult[][] };
    /** Other processes' share of the CPU just before each measurement. */
    busy: number[];
}

async function benchShape(shape: TestModelShape): Promise<ShapeResult> {
    const modelPath = await ensureTestModel({ shape, type: "q4_k_m", seed: 1, onProgress: (f, label) => log(`writing the ${shape} model: ${label} ${(f * 100).toFixed(0)}%`) });
    const tokens = opts.tokens ?? (shape === "tiny" ? 256 : 64);
    const rounds = opts.rounds ?? (shape === "tiny" ? 5 : 3);
    const maxLevel = Math.max(...opts.levels);
    log(`${shape}: ${path.relative(root, modelPath)}, ${opts.threads} threads, ${opts.parallel} slots, ${tokens} tokens per stream, ${rounds} rounds`);

    // Prompts of exactly PROMPT_TOKENS tokens (the tiny model's tokenizer is Phi-2's, like every test model's)
    const tok = await PhiModel.load({ modelPath: await ensureTestModel({ shape: "tiny", type: "q4_k_m", seed: 1 }), threads: 1, contextSize: 64, sequences: 1 });
    const candidates = Array.from({ length: maxLevel + 24 }, (_, v) => buildPrompt((t) => tok.tokenize(t), PROMPT_TOKENS, v).text);
    await tok.dispose();

    const cells = kvCells(opts.parallel, tokens);
    const ours = await startOurs(modelPath, opts.threads, opts.parallel, cells);
    let llama: RunningServer | undefined;
    try {
        // prompts whose greedy continuation does not end before the budget (random weights can pick EOS)
        const prompts: string[] = [];
        for (const p of candidates) {
            const r = await streamCompletion(ours.url, { model: "m", prompt: p, max_tokens: tokens, temperature: 0 });
            if (r.tokens === tokens) prompts.push(p);
            if (prompts.length === maxLevel) break;
        }
        if (prompts.length < maxLevel) throw new Error(`only ${prompts.length} of ${candidates.length} prompts run ${tokens} greedy tokens without EOS on ${shape}`);
        log(`${shape}: ${prompts.length} prompts run the whole budget`);
        if (opts.llama) {
            if (!fs.existsSync(opts.llamaServer)) throw new Error(`${opts.llamaServer} is missing: build it with \`node scripts/build-llama-server.mjs\` (or pass --no-llama)`);
            llama = await startLlama(opts.llamaServer, modelPath, opts.threads, opts.parallel, cells);
        }
        const direct = await startDirect({ modelPath, threads: opts.threads, sequences: opts.parallel, contextSize: CONTEXT });
        try {
            const result: ShapeResult = {
                shape, model: path.relative(root, modelPath), tokens,
                direct: { decode: [], ttft: [] },
                ours: { decode: [], ttft: [], levels: [] },
                ...(llama ? { llama: { decode: [], ttft: [], levels: [] } } : {}),
                busy: [],
            };
            const body = { model: "m", prompt: prompts[0]!, max_tokens: tokens, temperature: 0, cache_prompt: false, ignore_eos: true };
            await streamCompletion(ours.url, body); // warm
            if (llama) await streamCompletion(llama.url, body);
            for (let round = 0; round < rounds; round++) {
                // single streams, alternating direct / ours / llama-server (order rotated every round)
                type Side = "direct" | "ours" | "llama";
                const order: Side[] = (["direct", "ours", ...(llama ? ["llama"] : [])] as Side[]);
                for (let i = 0; i < round % order.length; i++) order.push(order.shift()!);
                for (const side of order) {
                    result.busy.push(await quiet());
                    log(`${shape} round ${round + 1}/${rounds}: ${side} single stream`);
                    if (side === "direct") {
                        const r = await direct.run(prompts[0]!, tokens);
                        if (r.tokens !== tokens) log(`warning: direct generated ${r.tokens} tokens, not ${tokens}`);
                        result.direct.decode.push(decodeRate(r));
                        result.direct.ttft.push(r.ttftMs);
                        continue;
                    }
                    const srv = side === "ours" ? ours : llama!;
                    const out = side === "ours" ? result.ours : result.llama!;
                    const single = await streamCompletion(srv.url, body);
                    if (single.tokens !== tokens) log(`warning: ${side} generated ${single.tokens} tokens, not ${tokens}`);
                    out.decode.push(decodeRate(single));
                    out.ttft.push(single.ttftMs);
                }
                for (const level of opts.levels) {
                    const sides = [["ours", ours, result.ours], ...(llama ? [["llama", llama, result.llama!]] : [])] as [string, RunningServer, { levels: LevelResult[][] }][];
                    if (round % 2 === 1) sides.reverse();
                    for (const [name, srv, out] of sides) {
                        result.busy.push(await quiet());
                        log(`${shape} round ${round + 1}/${rounds}: ${name} ${level} concurrent`);
                        const r = await concurrent(srv.url, prompts, level, tokens);
                        if (r.tokens !== level * tokens) log(`warning: ${name} generated ${r.tokens} tokens at ${level} streams, not ${level * tokens}`);
                        (out.levels[round] ??= []).push(r);
                    }
                }
            }
            return result;
        } finally {
            await direct.stop();
        }
    } finally {
        await ours.stop();
        await llama?.stop();
    }
}

function table(results: ShapeResult[]): string {
    const lines: string[] = [];
    const fmtMs = (x: number) => (Number.isFinite(x) ? `${x.toFixed(x < 100 ? 1 : 0)} ms` : "—");
    for (const r of results) {
        const lv = (side: { levels: LevelResult[][] } | undefined, level: number) => best((side?.levels ?? []).map((ls) => ls.find((l) => l.level === level)?.aggregateTokS ?? NaN));
        const busy = median(r.busy);
        lines.push(`\n${r.shape}-shape Q4_K_M (${r.model}), ${opts.threads} threads, ${opts.parallel} slots, ${r.tokens} tokens per stream (best of ${r.ours.decode.length} rounds; other processes used ${(busy * 100).toFixed(0)}% of the CPU before a measurement, median)`);
        lines.push(`| | PhiModel direct | phi-agent serve | llama-server | serve / direct | serve / llama-server |`);
        lines.push(`|---|---|---|---|---|---|`);
        const d = best(r.direct.decode), o = best(r.ours.decode), l = best(r.llama?.decode ?? []);
        lines.push(`| single-stream decode tok/s | ${fmtRate(d)} | ${fmtRate(o)} | ${fmtRate(l)} | ${fmtRatio(o / d)} | ${fmtRatio(o / l)} |`);
        const dt = Math.min(...r.direct.ttft), ot = Math.min(...r.ours.ttft), lt = r.llama ? Math.min(...r.llama.ttft) : NaN;
        lines.push(`| time to first token (${PROMPT_TOKENS}-token prompt) | ${fmtMs(dt)} | ${fmtMs(ot)} (HTTP) | ${fmtMs(lt)} (HTTP) | | ${fmtRatio(lt / ot)} |`);
        for (const level of opts.levels) {
            const ol = lv(r.ours, level), ll = lv(r.llama, level);
            lines.push(`| ${level} concurrent stream${level > 1 ? "s" : ""}, aggregate tok/s | | ${fmtRate(ol)} | ${fmtRate(ll)} | | ${fmtRatio(ol / ll)} |`);
        }
    }
    return lines.join("\n");
}

const results: ShapeResult[] = [];
try {
    for (const shape of opts.shapes) results.push(await benchShape(shape));
} finally {
    closeClient();
}
const out = table(results);
process.stdout.write(out + "\n");
const jsonPath = opts.json ?? path.join(root, "bench", "results", `bench-server-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
fs.mkdirSync(path.dirname(jsonPath), { recursive: true });
fs.writeFileSync(jsonPath, JSON.stringify({ options: { ...opts, llamaServer: path.relative(root, opts.llamaServer) }, results, medians: results.map((r) => ({
    shape: r.shape, direct: median(r.direct.decode), ours: median(r.ours.decode), llama: median(r.llama?.decode ?? []),
})) }, null, 2) + "\n");
log(`raw numbers: ${path.relative(root, jsonPath)}`);
