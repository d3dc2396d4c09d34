/**
 * Shared pieces of `npm run bench`: the child-process protocol, statistics, the live progress line and the
 * exact-length prompt builder. Nothing here loads a model.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { performance } from "node:perf_hooks";

/** Repository root (dist/scripts/bench-lib/x.js -> ../../..; scripts/bench-lib/x.ts -> ../..). */
export function repoRoot(): string {
    let dir = path.dirname(fileURLToPath(import.meta.url));
    for (;;) {
        if (fs.existsSync(path.join(dir, "package.json")) && fs.existsSync(path.join(dir, "scripts"))) return dir;
        const up = path.dirname(dir);
        if (up === dir) throw new Error("bench: cannot find the repository root (no package.json above " + import.meta.url + ")");
        dir = up;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Child protocol: a worker gets its job as JSON in argv[2], writes "@@progress <text>" lines to stderr while it
// works and exactly one "@@result <json>" line to stdout at the end. Anything else on stderr is kept for errors.

const PROGRESS = "@@progress ";
const RESULT = "@@result ";

export function readJob<T>(): T {
    const raw = process.argv[2];
    if (!raw) throw new Error("bench worker: missing job JSON argument");
    return JSON.parse(raw) as T;
}

export function reportProgress(text: string): void {
    process.stderr.write(PROGRESS + text.replace(/\n/g, " ") + "\n");
}

export function reportResult(result: unknown): void {
    process.stdout.write(RESULT + JSON.stringify(result) + "\n");
}

/** Peak resident set size of this process, in KiB (VmHWM; falls back to resourceUsage().maxRSS). */
export function peakRssKb(): number {
    try {
        const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(fs.readFileSync("/proc/self/status", "utf8"));
        if (m) return Number(m[1]);
    } catch {
        /* not Linux */
    }
    return process.resourceUsage().maxRSS;
}

/** Calls `f` with each complete line of a child's output stream (without its newline). */
function onLines(stream: NodeJS.ReadableStream, f: (line: string) => void): void {
    let buf = "";
    stream.setEncoding("utf8");
    stream.on("data", (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            f(line);
        }
    });
}

/** Runs a worker in its own Node process (so every side has its own memory and threads). */
export function runWorker<T>(script: string, job: unknown, onProgress: (text: string) => void, timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [script, JSON.stringify(job)], { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        const errTail: string[] = [];
        const timer = setTimeout(() => {
            child.kill("SIGKILL");
            reject(new Error(`${path.basename(script)} ran longer than ${Math.round(timeoutMs / 1000)} s and was stopped`));
        }, timeoutMs);
        child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
        onLines(child.stderr, (line) => {
            if (line.startsWith(PROGRESS)) onProgress(line.slice(PROGRESS.length));
            else if (line.trim()) {
                errTail.push(line);
                if (errTail.length > 30) errTail.shift();
            }
        });
        child.on("error", (err) => {
            clearTimeout(timer);
            reject(err);
        });
        child.on("close", (code, signal) => {
            clearTimeout(timer);
            const line = out.split("\n").find((l) => l.startsWith(RESULT));
            if (code === 0 && line) {
                resolve(JSON.parse(line.slice(RESULT.length)) as T);
                return;
            }
            const why = signal ? `was killed by ${signal}` : `exited with code ${code}`;
            reject(new Error(`${path.basename(script)} ${why}${errTail.length ? ":\n    " + errTail.slice(-12).join("\n    ") : ""}`));
        });
    });
}

/**
 * A worker that stays up: started with its job in argv[2], it reports one "@@result" line when ready, then
 * answers each line of JSON sent to its stdin with one "@@result" line. `ask` sends a line and resolves with the
 * answer; a worker that exits rejects what waits.
 */
export interface LineWorker {
    ask<T>(request: unknown): Promise<T>;
    stop(): Promise<void>;
}

export async function startLineWorker(script: string, job: unknown): Promise<LineWorker> {
    const child = spawn(process.execPath, [script, JSON.stringify(job)], { stdio: ["pipe", "pipe", "pipe"] });
    let err = "";
    child.stderr.setEncoding("utf8").on("data", (d: string) => (err = (err + d).slice(-2000)));
    const waiting: { resolve: (line: string) => void; reject: (e: Error) => void }[] = [];
    onLines(child.stdout, (line) => {
        if (line.startsWith(RESULT)) waiting.shift()?.resolve(line.slice(RESULT.length));
    });
    child.once("exit", (code) => {
        for (const w of waiting.splice(0)) w.reject(new Error(`${path.basename(script)} exited (${code}): ${err}`));
    });
    const next = () => new Promise<string>((resolve, reject) => waiting.push({ resolve, reject }));
    await next(); // ready
    return {
        ask: async <T>(request: unknown) => {
            const answer = next();
            child.stdin.write(JSON.stringify(request) + "\n");
            return JSON.parse(await answer) as T;
        },
        stop: async () => {
            if (child.exitCode !== null) return;
            const exited = new Promise((r) => child.once("exit", r));
            child.stdin.end();
            await exited;
        },
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics

export function best(xs: number[]): number {
    const v = xs.filter(Number.isFinite);
    return v.length ? Math.max(...v) : NaN;
}

export function least(xs: number[]): number {
    const v = xs.filter(Number.isFinite);
    return v.length ? Math.min(...v) : NaN;
}

export function median(xs: number[]): number {
    const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
    if (!v.length) return NaN;
    const m = v.length >> 1;
    return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

// ---------------------------------------------------------------------------------------------------------------
// Live progress line on stderr (one line rewritten in place on a TTY; plain lines, throttled, otherwise).

export class LiveLine {
    private readonly tty = Boolean(process.stderr.isTTY);
    private last = "";
    private lastPrinted = 0;
    private readonly started = Date.now();

    set(text: string): void {
        const elapsed = ((Date.now() - this.started) / 1000).toFixed(0).padStart(4) + "s ";
        const line = elapsed + text;
        if (this.tty) {
            const width = Math.max(20, (process.stderr.columns || 100) - 1);
            process.stderr.write("\r\x1b[2K" + line.slice(0, width));
        } else if (text !== this.last && Date.now() - this.lastPrinted > 2000) {
            process.stderr.write(line + "\n");
            this.lastPrinted = Date.now();
        }
        this.last = text;
    }

    /** A line that stays (the step is done). */
    log(text: string): void {
        if (this.tty) process.stderr.write("\r\x1b[2K");
        const elapsed = ((Date.now() - this.started) / 1000).toFixed(0).padStart(4) + "s ";
        process.stderr.write(elapsed + text + "\n");
        this.last = "";
    }

    clear(): void {
        if (this.tty) process.stderr.write("\r\x1b[2K");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Prompts of an exact token count

/**
 * Plain English text the prompts are cut from (written for this bench). Real text, so that the tokenizer does
 * what it does on real prompts: mostly one token per word.
 */
export const CORPUS = [
    "The benefits of multi-agent systems include the ability to divide a large problem into smaller parts,",
    "to let specialised agents work on each part at the same time, and to combine their answers into a result",
    "that no single agent could have produced alone. Agents exchange messages, keep their own state and decide",
    "for themselves when to act. A system can grow by adding agents rather than by rewriting the ones that",
    "already exist, and a failure in one agent does not have to bring down the rest. In a small office, one",
    "agent might read the mail, another keep the calendar, and a third write short summaries of long reports",
    "for the people who have no time to read them. Each of them is simple; together they save hours every week.",
    "Language models make such agents easier to build, because a single model can read a request written in",
    "plain words and answer it in plain words. Running the model on the same machine as the agents keeps the",
    "data where it belongs, removes the cost of a network call, and lets the system work when the network is",
    "down. The price is speed: a laptop has far less memory bandwidth than a data centre, so every token the",
    "model writes has to be paid for with a full pass over its weights. Small models such as Phi-2, with close",
    "to three billion parameters, are a good fit for this setting. Quantized to four bits, the weights take less",
    "than two gigabytes, which fits in the memory of most computers sold in the last ten years, and a modern",
    "processor can produce several words per second without any graphics card at all.",
].join(" ");

export interface BuiltPrompt {
    text: string;
    /** The ids `tokenize(text)` gives (no BOS/EOS added). */
    ids: number[];
}

/**
 * A prompt whose tokenization is exactly `n` tokens, cut from CORPUS starting at word `variant * 3` (different
 * variants give different prompts of the same length). `tokenize` must not add special tokens.
 */
export function buildPrompt(tokenize: (text: string) => number[], n: number, variant: number): BuiltPrompt {
    const words = CORPUS.split(" ");
    const start = (variant * 3) % words.length;
    const pieces: string[] = [];
    let i = start;
    let count = 0;
    // Grow one word at a time until n tokens are reached or passed.
    const text = () => pieces.join(" ");
    while (count < n) {
        pieces.push(words[i % words.length]!);
        i++;
        count = tokenize(text()).length;
    }
    if (count > n) {
        pieces.pop();
        count = tokenize(text()).length;
    }
    // Fill up with words that are one token each after a space (" the").
    let t = text();
    let guard = 0;
    while (count < n && guard++ < 4 * n) {
        const next = t + " the";
        const c = tokenize(next).length;
        if (c > n) break;
        t = next;
        count = c;
    }
    const ids = tokenize(t);
    if (ids.length !== n) throw new Error(`bench: could not build a prompt of exactly ${n} tokens (got ${ids.length})`);
    return { text: t, ids };
}

// ---------------------------------------------------------------------------------------------------------------
// Results shared between the workers and the runner

/** One timed generate() call, on any side. */
export interface RunTiming {
    promptTokens: number;
    completionTokens: number;
    /** Prompt decode time (ours: usage.promptMs; C++: prompt_ms; node-llama-cpp: time to first token). */
    promptMs: number;
    /** Time to first token, from the call. */
    ttftMs: number;
    /** Decode tokens per second: (completionTokens - 1) / time from first to last token. */
    decodeTokS: number;
    finishReason: string;
    wallMs: number;
}

export interface SingleSideResult {
    side: "ours" | "cpp" | "nlc";
    loadColdMs: number;
    loadWarmMs: number;
    /** Warm load with repack off (weights purely memory-mapped); only measured when the main runs repack. */
    loadWarmMmapMs?: number;
    /** Keyed by prompt length ("128", "512"). */
    runs: Record<string, RunTiming[]>;
    /** Greedy tokens of the first prompt (for cross-checking sides). */
    tokens: number[];
    peakRssKb: number;
    /** CPU time the side's process used (for the foreign-load estimate). */
    cpuMs: number;
    notes: string[];
    extra?: Record<string, unknown>;
}

export function fmtMs(ms: number): string {
    if (!Number.isFinite(ms)) return "-";
    if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    if (ms >= 100) return ms.toFixed(0) + " ms";
    if (ms >= 10) return ms.toFixed(1) + " ms";
    return ms.toFixed(2) + " ms";
}

export function fmtRate(x: number): string {
    if (!Number.isFinite(x)) return "-";
    if (x >= 1000) return x.toFixed(0);
    if (x >= 100) return x.toFixed(1);
    return x.toFixed(2);
}

export function fmtRatio(x: number): string {
    return Number.isFinite(x) ? x.toFixed(2) + "×" : "-";
}

export function fmtMb(kb: number): string {
    return Number.isFinite(kb) && kb > 0 ? (kb / 1024).toFixed(0) + " MB" : "-";
}

// ---------------------------------------------------------------------------------------------------------------
// Other processes on the machine (a small shared machine makes every number depend on them)

export interface CpuSnapshot {
    /** Busy CPU time of the whole machine, ms (all cores). */
    busyMs: number;
    at: number;
}

const USER_HZ = 100;

/** Machine-wide busy CPU time from /proc/stat (undefined where there is none). */
export function cpuSnapshot(): CpuSnapshot | undefined {
    try {
        const line = fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!;
        const f = line.trim().split(/\s+/).slice(1).map(Number);
        // user nice system idle iowait irq softirq steal ...
        const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + (f[7] ?? 0);
        return { busyMs: (busy * 1000) / USER_HZ, at: performance.now() };
    } catch {
        return undefined;
    }
}

/**
 * Share of the machine's CPU capacity that OTHER processes used between two snapshots, given the CPU time our
 * measured process used (0..1; NaN when unknown).
 */
export function foreignLoad(a: CpuSnapshot | undefined, b: CpuSnapshot | undefined, ownCpuMs: number, cores: number): number {
    if (!a || !b || !Number.isFinite(ownCpuMs)) return NaN;
    const wall = b.at - a.at;
    if (wall <= 0) return NaN;
    return Math.max(0, Math.min(1, (b.busyMs - a.busyMs - ownCpuMs) / (wall * cores)));
}

/** CPU time this process has used, ms. */
export function ownCpuMs(): number {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
}

/**
 * Waits (up to maxWaitMs) until other processes use less than `threshold` of the machine, sampling 1 s at a time.
 * Returns the last measured busy share.
 */
export async function waitForQuiet(threshold: number, maxWaitMs: number, onWait: (busy: number) => void): Promise<number> {
    const cores = os.availableParallelism();
    const deadline = Date.now() + maxWaitMs;
    for (;;) {
        const a = cpuSnapshot();
        const own0 = ownCpuMs();
        await new Promise((r) => setTimeout(r, 1000));
        const busy = foreignLoad(a, cpuSnapshot(), ownCpuMs() - own0, cores);
        if (!(busy >= threshold) || Date.now() >= deadline) return busy;
        onWait(busy);
        await new Promise((r) => setTimeout(r, 4000));
    }
}
