/**
 * checkGbnf against llama.cpp itself, in a child process (an abort there cannot take the test runner with it):
 * hundreds of random and mutated grammars; every one we accept is handed to llama.cpp and generated from (it must
 * never abort, hang or fail), and every one we refuse for a reason llama.cpp's parser also refuses on is handed to
 * llama.cpp's grammar parser directly (through the raw addon) and must be refused there too. The ones we refuse
 * for stricter reasons (what would make llama.cpp hang, abort or never finish) are not handed to it.
 */
import { expect } from "chai";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { tinyModel } from "./helpers/models.js";

const here = (p: string) => new URL(p, import.meta.url).href;

interface FuzzReport {
    total: number;
    accepted: number;
    generated: number;
    tokenRefused: number;
    llamaKinds: number;
    llamaAgreed: number;
    stricter: Record<string, number>;
    disagreements: { text: string; ours: string; llama: string }[];
}

function runChild(file: string, args: string[]): Promise<{ status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [file, ...args], { env: { ...process.env, PHI_AGENT_TEST: "1" }, stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "", stderr = "";
        child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
        child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-20000)));
        child.on("error", reject);
        child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr }));
    });
}

const CHILD = `
import fs from "node:fs";
import path from "node:path";
import { PhiModel, GrammarError } from ${JSON.stringify(here("../src/index.js"))};
import { loadBinding, ensureLibrary, packageRoot } from ${JSON.stringify(here("../src/native/binding.js"))};
import { checkGbnf } from ${JSON.stringify(here("../src/grammar/gbnf.js"))};
import { randomGrammars } from ${JSON.stringify(here("./helpers/gbnfFuzz.js"))};

const [modelPath, seed, count] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const dir = path.join(packageRoot, "deps", "llama.cpp", "grammars");
const seeds = fs.readdirSync(dir).filter((f) => f.endsWith(".gbnf")).map((f) => fs.readFileSync(path.join(dir, f), "utf8"));
const texts = randomGrammars(seed, count, seeds);
const LLAMA_KINDS = new Set(["syntax", "undefined-rule", "no-root", "empty", "left-recursion", "repetition"]);

const model = await PhiModel.load({ modelPath, threads: 1, contextSize: 64, sequences: 1 });
// the raw addon, for llama.cpp's own verdict on what we refuse
const b = loadBinding();
ensureLibrary("cpu");
const raw = new b.NativeModel();
await raw.load(modelPath, { gpuLayers: 0, deviceIndex: -1, mmap: true, repack: false });
const engine = new b.NativeEngine(raw, { kvSize: 64, contextSize: 64, batchSize: 64, sequences: 1, threads: 1, batchThreads: 1, threadpool: false, flashAttention: -1, promptCacheSize: 0 });
await engine.init();
const OPTIONS = { maxTokens: 1, stream: false, temperature: 0, topK: 0, topP: 1, minP: 0, repeatPenalty: 1, presencePenalty: 0,
    frequencyPenalty: 0, repeatLastN: 64, seed: 1, stop: [], captureLogits: false, logprobs: -1 };

const report = { total: texts.length, accepted: 0, generated: 0, tokenRefused: 0, llamaKinds: 0, llamaAgreed: 0, stricter: {}, disagreements: [] };
for (const text of texts) {
    let kind = "accept";
    try {
        checkGbnf(text);
    } catch (err) {
        if (!(err instanceof GrammarError)) throw err;
        kind = err.kind;
    }
    if (kind === "accept") {
        report.accepted++;
        try {
            await model.generate("Output:", { grammar: text, maxTokens: 6 });
            report.generated++;
        } catch (err) {
            if (err instanceof GrammarError && err.kind === "token") report.tokenRefused++;
            else report.disagreements.push({ text, ours: "accepted", llama: String(err?.code) + ": " + err?.message });
        }
    } else if (LLAMA_KINDS.has(kind)) {
        report.llamaKinds++;
        try {
            const id = engine.submit(Int32Array.of(7), { ...OPTIONS, grammar: text }, () => {});
            engine.cancel(id);
            report.disagreements.push({ text, ours: kind, llama: "accepted" });
        } catch (err) {
            if (/llama.cpp refused the grammar/.test(err.message)) report.llamaAgreed++;
            else report.disagreements.push({ text, ours: kind, llama: String(err.code) + ": " + err.message });
        }
    } else {
        report.stricter[kind] = (report.stricter[kind] ?? 0) + 1;
    }
}
await engine.close();
await raw.dispose();
await model.dispose();
console.log(JSON.stringify(report));
`;

describe("grammar fuzz: checkGbnf's verdicts against llama.cpp (child process)", function () {
    this.timeout(900_000);
    let dir: string;
    before(function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-gbnf-fuzz-"));
    });
    after(function () {
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it("1000 random and mutated grammars: llama.cpp runs every one we accept, and refuses every one we refuse as it would", async function () {
        const file = path.join(dir, "fuzz-child.mjs"); // it imports the compiled modules by their file URLs
        fs.writeFileSync(file, CHILD);
        {
            const r = await runChild(file, [await tinyModel("q8_0"), "11", "1000"]);
            const tail = `\n--- stdout ---\n${r.stdout.slice(-3000)}\n--- stderr ---\n${r.stderr.slice(-3000)}`;
            expect(r.signal, `the child died of a signal (llama.cpp aborted?)${tail}`).to.equal(null);
            expect(r.status, `the child's exit code${tail}`).to.equal(0);
            const report = JSON.parse(r.stdout.trim().split("\n").pop()!) as FuzzReport;
            console.log(`      ${report.total} grammars: ${report.accepted} accepted (${report.generated} generated from, ${report.tokenRefused} refused for their tokens), ` +
                `${report.llamaKinds} refused as llama.cpp refuses (${report.llamaAgreed} confirmed), stricter: ${JSON.stringify(report.stricter)}`);
            expect(report.disagreements, JSON.stringify(report.disagreements.slice(0, 3), null, 1)).to.deep.equal([]);
            expect(report.generated, "enough accepted grammars to mean something").to.be.at.least(100);
            expect(report.llamaAgreed, "enough refused ones").to.be.at.least(300);
        }
    });
});
