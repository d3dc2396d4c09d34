/**
 * Lifetime: the model file, the load, the decode thread and the native objects, under the ways a process ends or
 * a file changes (issue 9, items 2, 4, 6, 7 and 8). What could abort or hang runs in a child process, and the
 * parent asserts how it ended: exit code 0 and no signal. Each child is started with a generous kill-bound so that
 * a hang fails the test instead of stalling the suite; nothing here times anything.
 */
import { expect } from "chai";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { DisposedError, PhiAgentError, PhiModel } from "../src/index.js";
import { readGGUF } from "../src/gguf/reader.js";
import { kv, writeGGUF } from "../src/gguf/writer.js";
import { ensureLibrary, loadBinding } from "../src/native/binding.js";
import { microPhi2Spec } from "../scripts/malformed-corpus.js";
import { tinyModel } from "./helpers/models.js";

const ENTRY = new URL("../src/index.js", import.meta.url).href;
const BINDING = new URL("../src/native/binding.js", import.meta.url).href;
const LOAD = { contextSize: 64, batchSize: 64, sequences: 1, threads: 1 } as const;
/** Kill-bound of a child: far above what any of them needs; reaching it means it hung. */
const CHILD_BOUND_MS = 100_000;

interface ChildResult {
    status: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
    hung: boolean;
}

let scriptDir: string;
let scriptCount = 0;

/** Runs `code` (an ES module) in a fresh node process with `args`; resolves when it has ended, however it ended. */
function runChild(code: string, options: { args?: string[]; nodeFlags?: string[]; env?: Record<string, string> } = {}): Promise<ChildResult> {
    const file = path.join(scriptDir, `child-${++scriptCount}.mjs`);
    fs.writeFileSync(file, code);
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [...(options.nodeFlags ?? []), file, ...(options.args ?? [])], {
            env: { ...process.env, ...options.env },
            stdio: ["ignore", "pipe", "pipe"],
        });
        let stdout = "";
        let stderr = "";
        let hung = false;
        child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
        child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        const bound = setTimeout(() => {
            hung = true;
            child.kill("SIGKILL");
        }, CHILD_BOUND_MS);
        child.on("error", reject);
        child.on("close", (status, signal) => {
            clearTimeout(bound);
            resolve({ status, signal, stdout, stderr, hung });
        });
    });
}

/** The child ended on its own with exit code 0: no abort, no crash signal, no hang. */
function expectCleanExit(r: ChildResult): void {
    const tail = `\n--- stdout ---\n${r.stdout.slice(-2000)}\n--- stderr ---\n${r.stderr.slice(-3000)}`;
    expect(r.hung, `the child hung (killed after ${CHILD_BOUND_MS} ms)${tail}`).to.equal(false);
    expect(r.signal, `the child died of a signal${tail}`).to.equal(null);
    expect(r.status, `the child's exit code${tail}`).to.equal(0);
}

/** The last line of a child's stdout, parsed as JSON. */
function lastJson<T>(r: ChildResult): T {
    const lines = r.stdout.trim().split("\n");
    return JSON.parse(lines[lines.length - 1]!) as T;
}

describe("lifetime", function () {
    let modelPath: string;

    before(async function () {
        modelPath = await tinyModel("f32");
        scriptDir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-lifetime-"));
    });
    after(function () {
        if (scriptDir) fs.rmSync(scriptDir, { recursive: true, force: true });
    });

    describe("the checked file is the loaded file (item 2)", function () {
        it("swapping files on the path after every close and during each load never hands llama.cpp an unchecked file (20 loads)", async function () {
            this.timeout(200_000);
            const dir = fs.mkdtempSync(path.join(scriptDir, "swap-"));
            const good = path.join(dir, "model.gguf");
            const bad = path.join(dir, "other.gguf");
            await writeGGUF(good, await microPhi2Spec());
            // block_count 0: llama.cpp GGML_ASSERTs (aborts the process) on it; the check refuses it
            await writeGGUF(bad, await microPhi2Spec({ metadata: { "phi2.block_count": kv.u32("phi2.block_count", 0) } }));
            const layers = (await readGGUF(good)).metadata["phi2.block_count"];
            const r = await runChild(`
                import fs from "node:fs";
                import { syncBuiltinESMExports } from "node:module";
                import { PhiModel, PhiAgentError } from ${JSON.stringify(ENTRY)};
                const [dir, layers] = process.argv.slice(2);
                const at = dir + "/model.gguf", other = dir + "/other.gguf", spare = dir + "/spare.gguf";
                let swaps = 0;
                const swap = () => { fs.renameSync(at, spare); fs.renameSync(other, at); fs.renameSync(spare, other); swaps++; };
                // Swap right after every FileHandle close: after the check's own close, i.e. between the check and the
                // load when the check does not keep its descriptor open through the load.
                const open = fs.promises.open;
                fs.promises.open = async function (...args) {
                    const fh = await open.apply(this, args);
                    const close = fh.close;
                    fh.close = async function () { const r = await close.call(fh); swap(); return r; };
                    return fh;
                };
                syncBuiltinESMExports(); // the library's import { open } from "node:fs/promises" sees it too
                let loaded = 0, refused = 0;
                for (let i = 0; i < 20; i++) {
                    // and twice during the load (its first and last progress call): the path keeps changing under it
                    let first = true;
                    const onProgress = (p) => { if (first || p >= 1) swap(); first = false; };
                    try {
                        const m = await PhiModel.load({ modelPath: at, contextSize: 64, batchSize: 64, sequences: 1, threads: 1, onProgress });
                        if (m.info.layers !== Number(layers)) throw new Error("loaded a file that was not checked: " + m.info.layers + " layers");
                        await m.generate("Hi", { maxTokens: 2 });
                        await m.dispose();
                        loaded++;
                    } catch (e) {
                        if (!(e instanceof PhiAgentError)) throw e;
                        refused++;
                    }
                }
                console.log(JSON.stringify({ loaded, refused, swaps }));
            `, { args: [dir, String(layers)] });
            expectCleanExit(r);
            const out = lastJson<{ loaded: number; refused: number; swaps: number }>(r);
            expect(out.loaded + out.refused, JSON.stringify(out)).to.equal(20);
            expect(out.loaded, `some loads found the good file at the path: ${JSON.stringify(out)}`).to.be.greaterThan(0);
            expect(out.refused, `some loads found the bad one (refused by the check): ${JSON.stringify(out)}`).to.be.greaterThan(0);
            expect(out.swaps, "one swap per close, two per load that reached llama.cpp").to.equal(out.loaded * 3 + out.refused);
        });

        it("a valid file swapped in during the load: the checked one is loaded (descriptor handoff); the fallback refuses", async function () {
            const dir = fs.mkdtempSync(path.join(scriptDir, "swap-valid-"));
            const at = path.join(dir, "model.gguf");
            const other = path.join(dir, "other.gguf");
            const spare = path.join(dir, "spare.gguf");
            await writeGGUF(at, await microPhi2Spec());
            fs.copyFileSync(modelPath, other); // a valid phi2 file of another shape (tiny: 2 layers, 256 wide)
            const checkedWidth = (await readGGUF(at)).metadata["phi2.embedding_length"];
            const otherWidth = (await readGGUF(other)).metadata["phi2.embedding_length"];
            expect(checkedWidth).to.not.equal(otherWidth);
            const swap = () => {
                fs.renameSync(at, spare);
                fs.renameSync(other, at);
                fs.renameSync(spare, other);
            };
            const loadSwappingOnce = () => {
                let swapped = false;
                return PhiModel.load({ modelPath: at, ...LOAD, onProgress: () => { if (!swapped) swap(); swapped = true; } });
            };
            const m = await loadSwappingOnce();
            expect(m.info.embeddingLength, "the model is the file that was checked").to.equal(checkedWidth);
            await m.generate("Hi", { maxTokens: 2 });
            await m.dispose();
            swap(); // the checked file back at the path
            // without the handoff (Windows), identity and size are compared after the load instead
            process.env["PHI_AGENT_TEST_FD_HANDOFF"] = "0";
            try {
                const err = await loadSwappingOnce().catch((e: unknown) => e);
                expect(err).to.be.instanceOf(PhiAgentError);
                expect((err as PhiAgentError).code).to.equal("ERR_LOAD_FAILED");
                expect((err as Error).message).to.match(/was replaced or changed while it was being loaded/);
            } finally {
                delete process.env["PHI_AGENT_TEST_FD_HANDOFF"];
            }
        });
    });

    describe("a throwing onProgress (item 4)", function () {
        it("rejects the load with ERR_LOAD_FAILED whose cause is the thrown error, and no DEP0168 warning", async function () {
            const warnings: Error[] = [];
            const onWarning = (w: Error) => warnings.push(w);
            process.on("warning", onWarning);
            try {
                const boom = new Error("boom");
                const first = await PhiModel.load({ modelPath, ...LOAD, onProgress: () => { throw boom; } }).catch((e: unknown) => e);
                expect(first).to.be.instanceOf(PhiAgentError);
                expect((first as PhiAgentError).code).to.equal("ERR_LOAD_FAILED");
                expect((first as PhiAgentError).message).to.match(/onProgress threw \(boom\)/);
                expect((first as PhiAgentError).cause).to.equal(boom);
                // whatever it throws is the cause
                const text = await PhiModel.load({ modelPath, ...LOAD, onProgress: () => { throw "text"; } }).catch((e: unknown) => e);
                expect((text as PhiAgentError).code).to.equal("ERR_LOAD_FAILED");
                expect((text as PhiAgentError).cause).to.equal("text");
                // a callback that throws only once the weights are in (progress 1) rejects the load too
                const late = await PhiModel.load({ modelPath, ...LOAD, onProgress: (p) => { if (p >= 1) throw new Error("late"); } })
                    .catch((e: unknown) => e);
                expect(late).to.be.instanceOf(PhiAgentError);
                expect((late as Error).message).to.match(/onProgress threw \(late\)/);
                // every progress call is delivered before load() settles
                const seen: number[] = [];
                const m = await PhiModel.load({ modelPath, ...LOAD, onProgress: (p) => seen.push(p) });
                const atLoad = seen.length;
                expect(seen[seen.length - 1]).to.equal(1);
                await m.generate("Hi", { maxTokens: 1 });
                expect(seen.length, "no progress call after load() resolved").to.equal(atLoad);
                await m.dispose();
                await new Promise((r) => setImmediate(r));
                expect(warnings.filter((w) => /DEP0168|N-API callback exception/.test(`${(w as { code?: string }).code} ${w.message}`))).to.deep.equal([]);
            } finally {
                process.off("warning", onWarning);
            }
        });

        it("under --force-node-api-uncaught-exceptions-policy=true the process lives and the try/catch gets the error", async function () {
            const r = await runChild(`
                import { PhiModel } from ${JSON.stringify(ENTRY)};
                try {
                    await PhiModel.load({ modelPath: process.argv[2], contextSize: 64, batchSize: 64, sequences: 1, threads: 1,
                        onProgress() { throw new Error("boom"); } });
                    console.log(JSON.stringify({ loaded: true }));
                } catch (e) {
                    console.log(JSON.stringify({ code: e.code, cause: e.cause && e.cause.message }));
                }
            `, { args: [modelPath], nodeFlags: ["--force-node-api-uncaught-exceptions-policy=true"] });
            expectCleanExit(r);
            expect(lastJson(r)).to.deep.equal({ code: "ERR_LOAD_FAILED", cause: "boom" });
        });
    });

    describe("the decode loop fails (item 6)", function () {
        // PHI_AGENT_TEST_FAULT=engine-throw:N (read only under PHI_AGENT_TEST=1, which test/setup.ts sets) makes the
        // engine thread throw at its Nth loop iteration, as a llama.cpp exception would.
        const FAULT = { PHI_AGENT_TEST_FAULT: "engine-throw:4" };

        it("in-flight, waiting and new calls reject with ERR_GENERATION_FAILED, and the model still disposes", async function () {
            process.env["PHI_AGENT_TEST_FAULT"] = FAULT.PHI_AGENT_TEST_FAULT;
            let model: PhiModel;
            try {
                model = await PhiModel.load({ modelPath, ...LOAD, contextSize: 256 });
            } finally {
                delete process.env["PHI_AGENT_TEST_FAULT"];
            }
            const inFlight = model.generate("Once upon a time", { maxTokens: 100 });
            const waiting = model.generate("Hello", { maxTokens: 4 }); // sequences: 1, so it waits behind the first
            const settled = await Promise.allSettled([inFlight, waiting]);
            const later = await model.generate("Hello", { maxTokens: 4 }).catch((e: unknown) => e);
            for (const s of [...settled.map((x) => (x.status === "rejected" ? x.reason : x.value)), later]) {
                expect(s).to.be.instanceOf(PhiAgentError);
                expect((s as PhiAgentError).code).to.equal("ERR_GENERATION_FAILED");
            }
            expect((later as Error).message).to.match(/decode loop stopped after an error.*dispose this model and load it again/);
            await model.dispose();
            expect(model.disposed).to.equal(true);
            expect(await model.generate("Hello").catch((e: unknown) => e)).to.be.instanceOf(DisposedError);
        });

        it("after it fails, a process that never disposes the model still exits (no thread-safe function left behind)", async function () {
            const r = await runChild(`
                import { PhiModel } from ${JSON.stringify(ENTRY)};
                const model = await PhiModel.load({ modelPath: process.argv[2], contextSize: 256, batchSize: 64, sequences: 1, threads: 1 });
                const calls = [model.generate("Once upon a time", { maxTokens: 100 }), model.generate("Hello", { maxTokens: 4 })];
                const settled = await Promise.allSettled(calls);
                calls.push(model.generate("Hello", { maxTokens: 4 }));
                const all = await Promise.allSettled(calls);
                console.log(JSON.stringify(all.map((s) => s.status === "rejected" ? s.reason.code : "resolved")));
            `, { args: [modelPath], env: FAULT });
            expectCleanExit(r);
            expect(lastJson(r)).to.deep.equal(["ERR_GENERATION_FAILED", "ERR_GENERATION_FAILED", "ERR_GENERATION_FAILED"]);
        });
    });

    describe("native lifetime (item 7)", function () {
        it("init() twice on one engine rejects the second with ERR_INVALID_STATE instead of std::terminate", async function () {
            const r = await runChild(`
                import { ensureLibrary, loadBinding } from ${JSON.stringify(BINDING)};
                const b = loadBinding();
                ensureLibrary("cpu");
                const m = new b.NativeModel();
                await m.load(process.argv[2], { gpuLayers: 0, deviceIndex: -1, mmap: true, repack: false });
                const e = new b.NativeEngine(m, { kvSize: 64, contextSize: 64, batchSize: 64, sequences: 1, threads: 1, batchThreads: 1, threadpool: false, flashAttention: -1, promptCacheSize: 0 });
                const [first, second] = await Promise.allSettled([e.init(), e.init()]);
                const third = await e.init().then(() => "resolved", (x) => x.code);
                await e.close();
                const afterClose = await e.init().then(() => "resolved", (x) => x.code);
                await m.dispose();
                console.log(JSON.stringify({ first: first.status, second: second.status === "rejected" ? second.reason.code : "resolved", third, afterClose }));
            `, { args: [modelPath] });
            expectCleanExit(r);
            expect(lastJson(r)).to.deep.equal({ first: "fulfilled", second: "ERR_INVALID_STATE", third: "ERR_INVALID_STATE", afterClose: "ERR_DISPOSED" });
        });

        it("NativeModel.dispose() frees on a worker thread: it returns a promise, and the model is unusable at once", async function () {
            const b = loadBinding();
            ensureLibrary("cpu");
            const m: InstanceType<typeof b.NativeModel> | undefined = new b.NativeModel();
            await m!.load(modelPath, { gpuLayers: 0, deviceIndex: -1, mmap: true, repack: false });
            expect(m!.tokenize("Hello", false).length).to.be.greaterThan(0);
            const freed = m!.dispose();
            expect(freed).to.be.instanceOf(Promise);
            expect(() => m!.tokenize("Hello", false)).to.throw(/not loaded|disposed/);
            await freed;
            await m!.dispose(); // idempotent
        });

        /** A child that runs `stage` in worker threads and terminates each at the event named by the stage. */
        function workerScript(): string {
            return `
                import { Worker } from "node:worker_threads";
                import { once } from "node:events";
                import { PhiModel } from ${JSON.stringify(ENTRY)};
                const [modelPath, stage, rounds] = process.argv.slice(2);
                const body = ${JSON.stringify(`
                    const { parentPort, workerData } = require("node:worker_threads");
                    (async () => {
                        const { PhiModel } = await import(workerData.entry);
                        const { stage, modelPath } = workerData;
                        const model = await PhiModel.load({ modelPath, contextSize: 256, batchSize: 64, sequences: 2, threads: 1,
                            onProgress: () => { if (stage === "load") parentPort.postMessage("now"); } });
                        if (stage === "load") parentPort.postMessage("now"); // the tiny model may load before the first message is read
                        const long = model.generate("Once upon a time", { maxTokens: 200, onToken: () => { if (stage === "generate") parentPort.postMessage("now"); } });
                        long.catch(() => undefined);
                        if (stage === "dispose") {
                            const disposing = model.dispose();
                            parentPort.postMessage("now");
                            await disposing;
                        }
                        if (stage === "live") {
                            await long;
                            parentPort.postMessage("now"); // then the worker ends with its model still loaded
                        }
                    })();
                `)};
                for (let i = 0; i < Number(rounds); i++) {
                    const w = new Worker(body, { eval: true, workerData: { entry: ${JSON.stringify(ENTRY)}, modelPath, stage } });
                    const exited = once(w, "exit");
                    const [message] = await Promise.race([once(w, "message"), exited.then(() => ["exited"])]);
                    if (message === "exited") throw new Error("the worker ended before reaching " + stage);
                    if (stage !== "live") await w.terminate();
                    await exited;
                }
                // the process is fine afterwards
                const model = await PhiModel.load({ modelPath, contextSize: 64, batchSize: 64, sequences: 1, threads: 1 });
                const r = await model.generate("Hello", { maxTokens: 3 });
                await model.dispose();
                console.log(JSON.stringify({ rounds: Number(rounds), tokens: r.tokens.length }));
            `;
        }

        for (const stage of ["load", "generate", "dispose", "live"] as const) {
            const what = stage === "live" ? "a worker that ends with its model still loaded (no dispose)" : `worker.terminate() mid-${stage}`;
            it(`${what}: no crash, no hang (8 rounds)`, async function () {
                this.timeout(200_000);
                const r = await runChild(workerScript(), { args: [modelPath, stage, "8"] });
                expectCleanExit(r);
                expect(lastJson(r)).to.deep.equal({ rounds: 8, tokens: 3 });
            });
        }

        for (const when of ["mid-generate", "mid-dispose", "after generating, without dispose"] as const) {
            it(`process exit with a live model, ${when}: exit code 0, no crash signal`, async function () {
                const r = await runChild(`
                    import { PhiModel } from ${JSON.stringify(ENTRY)};
                    const when = process.argv[3];
                    const model = await PhiModel.load({ modelPath: process.argv[2], contextSize: 256, batchSize: 64, sequences: 2, threads: 1 });
                    if (when === "mid-generate") {
                        model.generate("Once upon a time", { maxTokens: 200, onToken: () => process.exit(0) }).catch(() => undefined);
                    } else if (when === "mid-dispose") {
                        model.generate("Once upon a time", { maxTokens: 200 }).catch(() => undefined);
                        model.dispose();
                        process.exit(0);
                    } else {
                        await model.generate("Hello", { maxTokens: 3 });
                        console.log("done"); // and the event loop ends with the model loaded
                    }
                `, { args: [modelPath, when] });
                expectCleanExit(r);
            });
        }
    });

    describe("a model file changed under a live model (item 8)", function () {
        it("with mmap: false, truncating the file after the load changes nothing", async function () {
            const copy = path.join(scriptDir, "truncated.gguf");
            fs.copyFileSync(modelPath, copy);
            const model = await PhiModel.load({ modelPath: copy, ...LOAD, mmap: false });
            try {
                const before = await model.generate("Hello", { maxTokens: 8 });
                fs.truncateSync(copy, 0);
                const after = await model.generate("Hello", { maxTokens: 8 });
                expect(after.tokens).to.deep.equal(before.tokens);
            } finally {
                await model.dispose();
                fs.rmSync(copy, { force: true });
            }
        });

        it("with mmap (the default), truncating the file kills the process with SIGBUS, as the README says (Linux)", async function () {
            if (process.platform !== "linux") this.skip();
            const copy = path.join(scriptDir, "truncated-mmap.gguf");
            fs.copyFileSync(modelPath, copy);
            const r = await runChild(`
                import fs from "node:fs";
                import { PhiModel } from ${JSON.stringify(ENTRY)};
                const model = await PhiModel.load({ modelPath: process.argv[2], contextSize: 64, batchSize: 64, sequences: 1, threads: 1 });
                await model.generate("Hello", { maxTokens: 2 });
                fs.truncateSync(process.argv[2], 0);
                await model.generate("Hello", { maxTokens: 2 });
                console.log("survived");
            `, { args: [copy] });
            fs.rmSync(copy, { force: true });
            expect(r.hung).to.equal(false);
            expect(r.signal, r.stderr).to.equal("SIGBUS");
        });
    });
});
