/**
 * `npm run fuzz`: runs the malformed-GGUF corpus (scripts/malformed-corpus.ts: the named cases, well-formed files
 * with hostile metadata values, and seeded mutations of a small phi2 model) through PhiModel.load, plus tokenize/generate/detokenize when a file loads, in worker child
 * processes. A worker handles many files one after the other and reports each over IPC; if it dies, the file it was
 * on is recorded as a process death and a new worker takes the rest.
 *
 *   node dist/scripts/fuzz.js [--seed N] [--count N] [--minutes M] [--jobs J] [--timeout S] [--keep DIR]
 *
 *   --seed     mutation seed (default 1)            --count    mutations (default 1000)
 *   --minutes  time budget; files not started by then are skipped and counted (default 4)
 *   --jobs     worker processes in parallel (default 1)   --timeout  seconds per file before it counts as a hang (default 60)
 *   --keep     copy every file that killed or hung a worker (or got an untyped error) into DIR
 *   --log      write one JSON line per file (name, outcome, code, message, ms) to FILE
 *   --selftest-crash N   make the worker abort() on file N: checks that a death is caught, counted and survived
 *
 * --worker is internal: the parent forks this file with it.
 *
 * Prints files tried, loaded, refused with a typed error (by code), untyped errors, hangs and process deaths.
 * Exit code 1 when any worker died or hung, or an error was not typed, or a named case got the wrong code.
 */
import { intFlag, numberFlag, scriptArgs } from "./args.js";
import { fork, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildCorpus, makeMetadataCase, METADATA_CASES, mutate, type NamedCase } from "./malformed-corpus.js";

interface Job {
    index: number;
    name: string;
    file: string;
    /** named cases: the code PhiModel.load must fail with */
    expectCode?: string;
    expectMessage?: string;
    /** remove the file afterwards */
    temp: boolean;
}

type Outcome =
    | { kind: "loaded"; tokens: number; ms: number }
    | { kind: "refused"; code: string; name: string; message: string; ms: number }
    | { kind: "untyped"; name: string; message: string; ms: number };

interface Report { index: number; outcome: Outcome }

const PROMPT = "Hello, world. The";

// ---------------------------------------------------------------------------------------------------------------
// worker

async function worker(): Promise<void> {
    const { PhiModel, PhiAgentError } = await import("../src/index.js");
    const crashAt = process.env["PHI_FUZZ_SELFTEST_CRASH"];
    process.on("message", (job: Job) => {
        if (crashAt !== undefined && job.index === Number(crashAt)) process.abort();
        void (async () => {
            const t0 = performance.now();
            let outcome: Outcome;
            try {
                const model = await PhiModel.load({ modelPath: job.file, contextSize: 64, batchSize: 64, sequences: 1, threads: 1 });
                try {
                    const ids = model.tokenize(PROMPT);
                    model.detokenize(ids);
                    const r = await model.generate(PROMPT, { maxTokens: 4 });
                    model.detokenize(r.tokens);
                    await model.evaluate(ids.slice(0, 3).length ? ids.slice(0, 3) : [0]);
                    outcome = { kind: "loaded", tokens: r.tokens.length, ms: performance.now() - t0 };
                } finally {
                    await model.dispose();
                }
            } catch (err) {
                const e = err as Error & { code?: unknown };
                const ms = performance.now() - t0;
                if (err instanceof PhiAgentError) outcome = { kind: "refused", code: err.code, name: e.name, message: e.message, ms };
                else if ((err instanceof TypeError || err instanceof RangeError) && typeof e.message === "string") {
                    outcome = { kind: "refused", code: e.name, name: e.name, message: e.message, ms };
                } else outcome = { kind: "untyped", name: e?.name ?? typeof err, message: String(e?.message ?? err), ms };
            }
            process.send!({ index: job.index, outcome } satisfies Report);
        })();
    });
    process.send!({ ready: true });
}

// ---------------------------------------------------------------------------------------------------------------
// parent


interface Death { name: string; file: string; how: string; stderr: string }

class Worker {
    child: ChildProcess;
    current: Job | undefined;
    timer: NodeJS.Timeout | undefined;
    stderr = "";
    /** set when we end the worker ourselves (done, or a hang) */
    retiring = false;
    ready: Promise<void>;

    constructor(private readonly onReport: (w: Worker, r: Report) => void, private readonly onExit: (w: Worker, how: string) => void) {
        const self = fileURLToPath(import.meta.url);
        const crash = parentArgs().selftestCrash;
        this.child = fork(self, ["--worker"], {
            stdio: ["ignore", "ignore", "pipe", "ipc"],
            env: crash === undefined ? process.env : { ...process.env, PHI_FUZZ_SELFTEST_CRASH: crash },
        });
        this.child.stderr!.on("data", (d: Buffer) => {
            this.stderr = (this.stderr + d.toString()).slice(-4000);
        });
        this.ready = new Promise((resolve) => {
            const onMsg = (m: unknown) => {
                if (m && typeof m === "object" && "ready" in m) {
                    this.child.off("message", onMsg);
                    resolve();
                }
            };
            this.child.on("message", onMsg);
        });
        this.child.on("message", (m: unknown) => {
            if (m && typeof m === "object" && "outcome" in m) this.onReport(this, m as Report);
        });
        this.child.on("exit", (code, signal) => this.onExit(this, signal ? `killed by ${signal}` : `exited with code ${code}`));
    }
}

const USAGE = "usage: node dist/scripts/fuzz.js [--seed N] [--count N] [--minutes M] [--jobs J] [--timeout S] [--keep DIR] [--log FILE] [--selftest-crash N]";

let parsed: ReturnType<typeof readParentArgs> | undefined;

function readParentArgs() {
    return scriptArgs("fuzz", USAGE, {
        seed: { type: "string" }, count: { type: "string" }, minutes: { type: "string" }, jobs: { type: "string" },
        timeout: { type: "string" }, keep: { type: "string" }, log: { type: "string" }, "selftest-crash": { type: "string" },
    }, (v) => ({
        seed: intFlag("seed", v.seed, 0) ?? 1,
        count: intFlag("count", v.count, 0) ?? 1000,
        minutes: numberFlag("minutes", v.minutes, 0.05) ?? 4,
        jobs: intFlag("jobs", v.jobs, 1) ?? 1,
        timeoutS: numberFlag("timeout", v.timeout, 1) ?? 60,
        keep: v.keep,
        logFile: v.log,
        selftestCrash: v["selftest-crash"] === undefined ? undefined : String(intFlag("selftest-crash", v["selftest-crash"], 0)),
    }));
}

/** The parent's flags (parsed once; a mistake exits 2 before any work). */
function parentArgs(): ReturnType<typeof readParentArgs> {
    parsed ??= readParentArgs();
    return parsed;
}

async function parent(): Promise<void> {
    const { seed, count, minutes, jobs, timeoutS, keep, logFile } = parentArgs();
    const log = logFile ? fs.createWriteStream(logFile) : undefined;
    const started = Date.now();
    const deadline = started + minutes * 60_000;

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-fuzz-"));
    const corpus = await buildCorpus(dir);
    const queue: (() => Promise<Job>)[] = [];
    corpus.named.forEach((c: NamedCase, i) => {
        queue.push(async () => ({ index: i, name: c.name, file: await c.make(dir), expectCode: c.code, expectMessage: c.message.source, temp: false }));
    });
    METADATA_CASES.forEach((c, k) => {
        const index = corpus.named.length + k;
        queue.push(async () => ({ index, name: `metadata: ${c.name}`, file: await makeMetadataCase(dir, c, k), temp: true }));
    });
    const firstMutation = corpus.named.length + METADATA_CASES.length;
    for (let k = 0; k < count; k++) {
        const index = firstMutation + k;
        queue.push(async () => {
            const m = mutate(corpus.base, corpus.layout, seed, k);
            const file = path.join(dir, `mutation-${k}.gguf`);
            fs.writeFileSync(file, m.bytes);
            return { index, name: m.name, file, temp: true };
        });
    }
    const total = queue.length;
    console.log(`fuzz: seed ${seed}: ${corpus.named.length} named cases + ${METADATA_CASES.length} hostile-metadata files + ` +
        `${count} mutations of a ${(corpus.base.length / 1e6).toFixed(1)} MB phi2 model; ` +
        `${jobs} worker process(es), ${minutes} min budget, ${timeoutS} s per file`);

    const stats = {
        tried: 0, loaded: 0, refused: 0, untyped: 0, hangs: 0, deaths: 0, skipped: 0, namedWrong: 0,
        byCode: new Map<string, number>(), slowest: { ms: 0, name: "" },
    };
    const deaths: Death[] = [];
    const problems: string[] = [];
    let next = 0;
    let lastProgress = Date.now();

    const keepFile = (job: Job) => {
        if (!keep) return;
        fs.mkdirSync(keep, { recursive: true });
        try {
            fs.copyFileSync(job.file, path.join(keep, `${String(job.index).padStart(4, "0")}-${path.basename(job.file)}`));
        } catch { /* missing path / directory cases */ }
    };
    const finishJob = (job: Job) => {
        if (job.temp) fs.rmSync(job.file, { force: true });
    };

    await new Promise<void>((resolveAll) => {
        let live = 0;
        const dispatch = async (w: Worker) => {
            if (next >= total || Date.now() > deadline) {
                if (next < total && stats.skipped === 0) stats.skipped = total - next;
                w.current = undefined;
                w.retiring = true;
                w.child.kill();
                return;
            }
            const job = await queue[next++]!();
            w.current = job;
            stats.tried++;
            w.timer = setTimeout(() => {
                stats.hangs++;
                problems.push(`HANG (> ${timeoutS} s): ${job.name}`);
                keepFile(job);
                w.current = undefined; // not a death: we killed it
                w.retiring = true;
                w.child.kill("SIGKILL");
                finishJob(job);
                spawn();
            }, timeoutS * 1000);
            w.child.send(job);
            if (Date.now() - lastProgress > 10_000) {
                lastProgress = Date.now();
                process.stderr.write(`  … ${stats.tried}/${total} files, ${Math.round((Date.now() - started) / 1000)} s\n`);
            }
        };
        const onReport = (w: Worker, r: Report) => {
            const job = w.current;
            if (!job || job.index !== r.index) return;
            clearTimeout(w.timer);
            const o = r.outcome;
            log?.write(JSON.stringify({ index: job.index, case: job.name, ...o }) + "\n");
            if (o.ms > stats.slowest.ms) stats.slowest = { ms: o.ms, name: job.name };
            if (o.kind === "loaded") {
                stats.loaded++;
            } else if (o.kind === "refused") {
                stats.refused++;
                stats.byCode.set(o.code, (stats.byCode.get(o.code) ?? 0) + 1);
                if (!o.message || o.message.length < 10) problems.push(`VAGUE MESSAGE ${JSON.stringify(o.message)}: ${job.name}`);
            } else {
                stats.untyped++;
                problems.push(`UNTYPED ${o.name}: ${o.message} — ${job.name}`);
                keepFile(job);
            }
            if (job.expectCode) {
                const got = o.kind === "refused" ? o.code : o.kind;
                const msgOk = o.kind === "refused" && new RegExp(job.expectMessage!).test(o.message);
                if (got !== job.expectCode || !msgOk) {
                    stats.namedWrong++;
                    problems.push(`NAMED CASE ${job.name}: expected ${job.expectCode} /${job.expectMessage}/, got ${got}: ${o.kind === "loaded" ? "" : o.message}`);
                }
            }
            finishJob(job);
            void dispatch(w);
        };
        const onExit = (w: Worker, how: string) => {
            clearTimeout(w.timer);
            live--;
            const job = w.current;
            if (job) {
                stats.deaths++;
                deaths.push({ name: job.name, file: job.file, how, stderr: w.stderr.trim().split("\n").slice(-6).join("\n") });
                log?.write(JSON.stringify({ index: job.index, case: job.name, kind: "death", how }) + "\n");
                keepFile(job);
                finishJob(job);
                spawn();
            } else if (!w.retiring) { // died between files: still a death
                stats.deaths++;
                deaths.push({ name: "(between files)", file: "", how, stderr: w.stderr.trim().split("\n").slice(-6).join("\n") });
                spawn();
            }
            if (live === 0 && (next >= total || Date.now() > deadline)) resolveAll();
        };
        const spawn = () => {
            live++;
            const w = new Worker(onReport, onExit);
            void w.ready.then(() => dispatch(w));
        };
        for (let j = 0; j < jobs; j++) spawn();
    });
    fs.rmSync(dir, { recursive: true, force: true });
    await new Promise<void>((resolve) => (log ? log.end(resolve) : resolve()));

    const secs = ((Date.now() - started) / 1000).toFixed(0);
    const lines = [
        ``,
        `files tried:               ${stats.tried} of ${total}${stats.skipped ? ` (${stats.skipped} skipped: time budget)` : ""} in ${secs} s`,
        `loaded (and generated):    ${stats.loaded}`,
        `refused with a typed error: ${stats.refused}`,
        ...[...stats.byCode].sort((a, b) => b[1] - a[1]).map(([code, n]) => `    ${code.padEnd(30)} ${n}`),
        `untyped errors:            ${stats.untyped}`,
        `named cases with the wrong error: ${stats.namedWrong} of ${corpus.named.length}`,
        `hangs (> ${timeoutS} s):           ${stats.hangs}`,
        `process deaths:            ${stats.deaths}`,
        `slowest file:              ${stats.slowest.ms.toFixed(0)} ms (${stats.slowest.name})`,
    ];
    console.log(lines.join("\n"));
    for (const d of deaths) console.log(`\nDEATH (${d.how}): ${d.name}\n${d.stderr.replace(/^/gm, "    ")}`);
    for (const p of problems.slice(0, 40)) console.log(p);
    const failed = stats.deaths > 0 || stats.hangs > 0 || stats.untyped > 0 || stats.namedWrong > 0;
    console.log(failed ? "\nFUZZ FAILED" : "\nfuzz passed: no process deaths, every failure a typed error");
    process.exitCode = failed ? 1 : 0;
}

if (process.argv.length === 3 && process.argv[2] === "--worker") {
    void worker();
} else {
    parentArgs();
    parent().catch((err) => {
        console.error(err);
        process.exit(1);
    });
}
