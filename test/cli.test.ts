/**
 * The phi-agent CLI as a user runs it: a real child process on the built dist/src/cli/main.js and the tiny test
 * models. Exit codes (0 done, 1 failed, 2 usage, 130 Ctrl-C, 141 stdout closed), one-line errors, --json, stdin,
 * --help/--version, and the output checks of quantize and make-test-model (also through the library).
 */
import { expect } from "chai";
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseFlags, UsageError } from "../src/cli/args.js";
import { OutputPathError } from "../src/errors.js";
import { readGGUF } from "../src/gguf/reader.js";
import { quantizeModel } from "../src/model/quantize.js";
import { packageRoot } from "../src/native/binding.js";
import { tinyModel } from "./helpers/models.js";

const CLI = path.join(packageRoot, "dist", "src", "cli", "main.js");
const VERSION = (JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { version: string }).version;

function cli(args: string[], options: { input?: string; script?: string; env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> {
    return spawnSync(process.execPath, [options.script ?? CLI, ...args], {
        encoding: "utf8", input: options.input ?? "", env: options.env ?? { ...process.env, PHI2_MODEL: "" }, timeout: 300_000,
    });
}

/** stderr is exactly one line, starting with `prefix`. */
function oneLine(stderr: string, prefix: string): string {
    const lines = stderr.split("\n").filter((l) => l.length > 0);
    expect(lines, stderr).to.have.length(1);
    expect(lines[0]).to.match(new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
    return lines[0]!;
}

const sha = (p: string) => createHash("sha256").update(fs.readFileSync(p)).digest("hex");

describe("phi-agent CLI", function () {
    this.timeout(300_000);
    let model: string;
    let dir: string;

    before(async function () {
        model = await tinyModel("f32");
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-cli-"));
    });
    after(function () {
        fs.rmSync(dir, { recursive: true, force: true });
    });

    describe("help, version and usage errors", function () {
        it("--version prints the package version", function () {
            const r = cli(["--version"]);
            expect(r.status, r.stderr).to.equal(0);
            expect(r.stdout).to.equal(`${VERSION}\n`);
        });

        it("--help lists every command, and each command has its own --help (exit 0)", function () {
            const top = cli(["--help"]);
            expect(top.status).to.equal(0);
            for (const cmd of ["generate", "tokenize", "inspect", "make-test-model", "quantize", "agent"]) {
                expect(top.stdout).to.include(`  ${cmd} `);
                for (const flag of ["--help", "-h"]) {
                    const r = cli([cmd, flag]);
                    expect(r.status, `${cmd} ${flag}: ${r.stderr}`).to.equal(0);
                    expect(r.stdout).to.match(new RegExp(`^Usage: phi-agent ${cmd} `));
                    expect(r.stderr).to.equal("");
                }
            }
            expect(cli(["generate", "--help"]).stdout).to.include("--max-tokens N").and.include("--progress");
            expect(cli(["quantize", "--help"]).stdout).to.include("--force");
        });

        it("no command prints the usage on stderr and exits 2; an unknown command is one line, exit 2", function () {
            const none = cli([]);
            expect(none.status).to.equal(2);
            expect(none.stderr).to.include("Usage: phi-agent <command>");
            const unknown = cli(["frobnicate"]);
            expect(unknown.status).to.equal(2);
            oneLine(unknown.stderr, 'phi-agent frobnicate: usage: unknown command "frobnicate"');
            expect(cli(["toString"]).status).to.equal(2); // not a prototype key
        });

        it("every bad flag or value is a usage error: exit 2, one line, before any work", function () {
            const cases: [string[], string][] = [
                [["generate", "--model", model, "--prompt", "hi", "--threads", "0"], "threads"],
                [["generate", "--model", model, "--prompt", "hi", "--threads", "-1"], "threads"],
                [["generate", "--model", model, "--prompt", "hi", "--threads=-1"], "threads"],
                [["generate", "--model", model, "--prompt", "hi", "--threads", "abc"], "--threads must be an integer"],
                [["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1.5"], "--max-tokens must be an integer"],
                [["generate", "--model", model, "--prompt", "hi", "--temperature", "warm"], "--temperature must be a number"],
                [["generate", "--model", model, "--prompt", "hi", "--flash-attention", "maybe"], "--flash-attention must be one of auto, on, off"],
                [["generate", "--model", model, "--prompt", "hi", "--bogus"], "unknown option --bogus"],
                [["generate", "--model", model, "--prompt"], "--prompt needs a value"],
                [["generate", "--model", model, "--prompt", "--json"], "--prompt needs a value"],
                [["generate", "--model", model, "--prompt", "hi", "--json=yes"], "--json takes no value"],
                [["generate", "--model", model, "stray"], 'unexpected argument "stray"'],
                [["generate", "--prompt", "hi"], "--model FILE is required"],
                [["tokenize", "--model", model, "--text"], "--text needs a value"],
                [["make-test-model"], "--out FILE is required"],
                [["make-test-model", "--out", path.join(dir, "never.gguf"), "--shape", "huge"], "--shape must be one of tiny, phi2"],
                [["make-test-model", "--out", path.join(dir, "never.gguf"), "--seed", "-1"], "--seed must be"],
                [["make-test-model", "--out", path.join(dir, "never.gguf"), "--type", "q3"], "--type must be one of"],
                [["quantize", "--model", model, "--out", path.join(dir, "never.gguf"), "--type", "q9"], "--type must be one of"],
                [["quantize", "--model", model, "--out", path.join(dir, "never.gguf"), "--type", "q8_0", "--threads", "0"], "threads"],
            ];
            for (const [args, frag] of cases) {
                const r = cli(args);
                const what = args.join(" ");
                expect(r.status, `${what}: ${r.stderr}`).to.equal(2);
                expect(oneLine(r.stderr, `phi-agent ${args[0]}: usage: `), what).to.include(frag);
                expect(r.stdout, what).to.equal("");
            }
            expect(fs.existsSync(path.join(dir, "never.gguf"))).to.equal(false);
        });

        it("a value that starts with a dash is taken as the value (--text \"-x\"), and --flag=--value works", function () {
            const a = cli(["tokenize", "--model", model, "--text", "-x", "--json"]);
            expect(a.status, a.stderr).to.equal(0);
            const b = cli(["tokenize", "--model", model, "--text=-x", "--json"]);
            expect(JSON.parse(a.stdout)).to.deep.equal(JSON.parse(b.stdout));
            expect((JSON.parse(a.stdout) as { tokens: number[] }).tokens).to.deep.equal([12, 87]); // "-" "x"
            const c = cli(["tokenize", "--model", model, "--text=--x", "--json"]);
            expect(c.status, c.stderr).to.equal(0);
            expect((JSON.parse(c.stdout) as { tokens: number[] }).tokens.length).to.be.above(0);
        });
    });

    describe("errors, --json and stdin", function () {
        it("a failure is one line with the error's code, exit 1", function () {
            const missing = cli(["inspect", "--model", path.join(dir, "missing.gguf")]);
            expect(missing.status).to.equal(1);
            expect(oneLine(missing.stderr, "phi-agent inspect: ")).to.include("[ERR_MODEL_NOT_FOUND]");
            const bad = path.join(dir, "bad.gguf");
            fs.writeFileSync(bad, "not a model\n");
            const gen = cli(["generate", "--model", bad, "--prompt", "hi"]);
            expect(gen.status).to.equal(1);
            expect(oneLine(gen.stderr, "phi-agent generate: ")).to.include("[ERR_INVALID_GGUF]");
        });

        it("generate --json prints one JSON object on stdout; --progress draws the load on stderr only", function () {
            const r = cli(["generate", "--model", model, "--prompt", "The benefits of", "--max-tokens", "6", "--threads", "1", "--json", "--progress"]);
            expect(r.status, r.stderr).to.equal(0);
            const lines = r.stdout.split("\n");
            expect(lines).to.have.length(2);
            expect(lines[1]).to.equal("");
            const j = JSON.parse(lines[0]!) as { text: string; tokens: number[]; finishReason: string; usage: { promptTokens: number } };
            expect(j.tokens).to.have.length(6);
            expect(j.finishReason).to.equal("length");
            expect(j.usage.promptTokens).to.equal(3);
            expect(r.stderr).to.match(/^loading test-tiny-f32-s1\.gguf: 0%$/m).and.match(/^loading test-tiny-f32-s1\.gguf: 100%$/m);
        });

        it("generate draws the load as one line redrawn in place on a terminal, and erases it", function () {
            const argv = [process.execPath, CLI, "generate", "--model", model, "--prompt", "hi", "--max-tokens", "3", "--threads", "1"];
            // util-linux script(1) gives the command a pseudo-terminal; its output is the terminal's
            const r = spawnSync("script", ["-qec", argv.map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" "), "/dev/null"], { encoding: "utf8" });
            if (r.error) this.skip(); // no script(1) here
            expect(r.status, r.stdout).to.equal(0);
            expect(r.stdout).to.match(/^\rloading test-tiny-f32-s1\.gguf \[-+\]   0%/);
            expect(r.stdout).to.include("100%").and.include("\r\x1b[K");
            const afterLoad = r.stdout.slice(r.stdout.lastIndexOf("\r\x1b[K") + 4);
            expect(afterLoad).to.not.include("loading");
            expect(afterLoad).to.match(/\[length; 1 prompt \+ 3 generated tokens;/);
        });

        it("generate and tokenize read the prompt from stdin when --prompt/--text is absent", function () {
            const prompt = "The benefits of multi-agent systems include";
            const viaFlag = cli(["generate", "--model", model, "--prompt", prompt, "--max-tokens", "5", "--threads", "1", "--json"]);
            const viaStdin = cli(["generate", "--model", model, "--max-tokens", "5", "--threads", "1", "--json"], { input: prompt });
            expect(viaStdin.status, viaStdin.stderr).to.equal(0);
            expect(JSON.parse(viaStdin.stdout).tokens).to.deep.equal(JSON.parse(viaFlag.stdout).tokens);
            expect(JSON.parse(viaStdin.stdout).usage.promptTokens).to.equal(8);
            const tok = cli(["tokenize", "--model", model], { input: prompt });
            expect(tok.status, tok.stderr).to.equal(0);
            expect(tok.stdout).to.equal("464 4034 286 5021 12 25781 3341 2291\n");
        });

        it("generate streams text to stdout and a summary line to stderr", function () {
            const r = cli(["generate", "--model", model, "--prompt", "hi", "--max-tokens", "4", "--threads", "1"]);
            expect(r.status, r.stderr).to.equal(0);
            expect(r.stdout.endsWith("\n")).to.equal(true);
            oneLine(r.stderr, "[length; 1 prompt + 4 generated tokens;");
        });
    });

    describe("the process: Ctrl-C, a closed pipe, the install path", function () {
        /** Starts a long generation and calls `act` on its first stdout bytes; resolves with how it ended. */
        function longGeneration(act: (child: ReturnType<typeof spawn>) => void): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
            return new Promise((resolve, reject) => {
                const child = spawn(process.execPath, [CLI, "generate", "--model", model, "--prompt", "Once upon a time",
                    "--max-tokens", "2000", "--context-size", "2048", "--threads", "1"], { stdio: ["ignore", "pipe", "pipe"] });
                let stdout = "", stderr = "", acted = false;
                child.stdout!.on("data", (d: Buffer) => {
                    stdout += d.toString();
                    if (!acted) {
                        acted = true;
                        act(child);
                    }
                });
                child.stdout!.on("error", () => undefined);
                child.stderr!.on("data", (d: Buffer) => { stderr += d.toString(); });
                child.on("error", reject);
                child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
            });
        }

        it("Ctrl-C (SIGINT) stops the generation and exits 130", async function () {
            const r = await longGeneration((child) => child.kill("SIGINT"));
            expect(r.signal).to.equal(null);
            expect(r.code, r.stderr).to.equal(130);
            oneLine(r.stderr, "[abort; ");
        });

        it("a closed stdout (| head -c 20) ends it quietly: no EPIPE stack, exit 141", async function () {
            const r = await longGeneration((child) => child.stdout!.destroy());
            expect(r.stderr).to.equal("");
            expect(r.code).to.equal(141);
        });

        it("runs from an install path with #, % and ? in it", function () {
            const root = path.join(dir, "odd #1 %41 ?x");
            fs.mkdirSync(path.join(root, "dist"), { recursive: true });
            fs.cpSync(path.join(packageRoot, "dist", "src"), path.join(root, "dist", "src"), { recursive: true });
            fs.copyFileSync(path.join(packageRoot, "package.json"), path.join(root, "package.json"));
            fs.symlinkSync(path.join(packageRoot, "node_modules"), path.join(root, "node_modules"));
            const script = path.join(root, "dist", "src", "cli", "main.js");
            const v = cli(["--version"], { script });
            expect(v.status, v.stderr).to.equal(0);
            expect(v.stdout).to.equal(`${VERSION}\n`);
            const out = path.join(root, "m.gguf");
            const m = cli(["make-test-model", "--out", out, "--type", "q8_0", "--json"], { script });
            expect(m.status, m.stderr).to.equal(0);
            expect(JSON.parse(m.stdout).path).to.equal(out);
            expect(fs.statSync(out).size).to.equal(JSON.parse(m.stdout).bytes);
        });
    });

    it("the README's `npx phi-agent` lines run from this checkout", function () {
        const readme = fs.readFileSync(path.join(packageRoot, "README.md"), "utf8");
        const block = /From a clone, the CLI runs through npx[^\n]*\n\n```sh\n([\s\S]*?)```/.exec(readme)?.[1];
        expect(block, "README: the npx block").to.be.a("string");
        const lines = block!.split("\n").map((l) => l.replace(/\s+#.*$/, "").trim()).filter(Boolean);
        expect(lines.length).to.be.at.least(3);
        const tiny = path.join(dir, "readme-tiny.gguf");
        const npx = path.join(path.dirname(process.execPath), "npx");
        for (const line of lines) {
            const words = [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!).map((w) => (w === "models/tiny.gguf" ? tiny : w));
            expect(words.slice(0, 2)).to.deep.equal(["npx", "phi-agent"]);
            const r = spawnSync(fs.existsSync(npx) ? npx : "npx", ["--offline", ...words.slice(1)], { cwd: packageRoot, encoding: "utf8", timeout: 300_000 });
            expect(r.status, `${line}: ${r.stderr}`).to.equal(0);
            expect(r.stdout.length, line).to.be.above(0);
        }
    });

    describe("output files: never replaced unasked, never the input", function () {
        it("make-test-model refuses an existing --out without --force, replaces it with --force", function () {
            const out = path.join(dir, "existing.gguf");
            fs.writeFileSync(out, "precious");
            const r = cli(["make-test-model", "--out", out, "--type", "q8_0"]);
            expect(r.status).to.equal(1);
            expect(oneLine(r.stderr, "phi-agent make-test-model: ")).to.include("already exists").and.include("--force").and.include("[ERR_OUTPUT_EXISTS]");
            expect(fs.readFileSync(out, "utf8")).to.equal("precious");
            const f = cli(["make-test-model", "--out", out, "--type", "q8_0", "--force", "--json"]);
            expect(f.status, f.stderr).to.equal(0);
            expect(fs.statSync(out).size).to.equal(JSON.parse(f.stdout).bytes);
        });

        it("make-test-model with a folder as --out fails at once (ERR_INVALID_OUTPUT), leaving nothing behind", function () {
            const folder = fs.mkdtempSync(path.join(dir, "folder-"));
            const r = cli(["make-test-model", "--out", folder, "--type", "q8_0", "--force"]);
            expect(r.status).to.equal(1);
            expect(oneLine(r.stderr, "phi-agent make-test-model: ")).to.include("is a folder").and.include("[ERR_INVALID_OUTPUT]");
            expect(fs.readdirSync(dir).filter((f) => f.startsWith("."))).to.deep.equal([]);
        });

        it("quantize never writes over its input, even with --force, by path, symlink or hard link", function () {
            const input = path.join(dir, "input.gguf");
            fs.copyFileSync(model, input);
            const link = path.join(dir, "input-symlink.gguf");
            const hard = path.join(dir, "input-hardlink.gguf");
            fs.symlinkSync(input, link);
            fs.linkSync(input, hard);
            const before = sha(input);
            for (const out of [input, path.join(dir, ".", "input.gguf"), link, hard]) {
                for (const force of [[], ["--force"]]) {
                    const r = cli(["quantize", "--model", input, "--out", out, "--type", "q8_0", ...force]);
                    expect(r.status, `${out} ${force.join("")}: ${r.stderr}`).to.equal(1);
                    expect(oneLine(r.stderr, "phi-agent quantize: ")).to.include("is the input file").and.include("[ERR_INVALID_OUTPUT]");
                }
            }
            expect(sha(input)).to.equal(before);
        });

        it("quantize refuses an existing --out without --force and replaces it with --force", function () {
            const out = path.join(dir, "q8.gguf");
            fs.writeFileSync(out, "precious");
            const r = cli(["quantize", "--model", model, "--out", out, "--type", "q8_0"]);
            expect(r.status).to.equal(1);
            expect(oneLine(r.stderr, "phi-agent quantize: ")).to.include("[ERR_OUTPUT_EXISTS]");
            expect(fs.readFileSync(out, "utf8")).to.equal("precious");
            const f = cli(["quantize", "--model", model, "--out", out, "--type", "q8_0", "--threads", "1", "--force", "--json"]);
            expect(f.status, f.stderr).to.equal(0);
            expect(JSON.parse(f.stdout)).to.include({ out, type: "q8_0" });
            return readGGUF(out).then((h) => expect(h.metadata["general.file_type"]).to.equal(7));
        });

        it("quantize into a missing folder or onto a folder says so before any work", function () {
            const missing = cli(["quantize", "--model", model, "--out", path.join(dir, "no", "such", "dir", "o.gguf"), "--type", "q8_0"]);
            expect(missing.status).to.equal(1);
            expect(oneLine(missing.stderr, "phi-agent quantize: ")).to.include("does not exist").and.include("[ERR_INVALID_OUTPUT]").and.not.include("iostream");
            const folder = cli(["quantize", "--model", model, "--out", dir, "--type", "q8_0", "--force"]);
            expect(folder.status).to.equal(1);
            expect(oneLine(folder.stderr, "phi-agent quantize: ")).to.include("is a folder");
        });
    });
});

describe("quantizeModel output checks", function () {
    this.timeout(120_000);
    let dir: string;
    let model: string;

    before(async function () {
        model = await tinyModel("f32");
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-quant-"));
    });
    after(function () {
        fs.rmSync(dir, { recursive: true, force: true });
    });

    async function rejection(p: Promise<unknown>): Promise<OutputPathError> {
        let err: unknown;
        try { await p; } catch (e) { err = e; }
        expect(err).to.be.instanceOf(OutputPathError);
        return err as OutputPathError;
    }

    it("rejects the input as output (also with overwrite), an existing file without overwrite, folders and missing folders", async function () {
        const input = path.join(dir, "in.gguf");
        fs.copyFileSync(model, input);
        const before = sha(input);
        expect((await rejection(quantizeModel(input, input, { type: "q8_0", overwrite: true }))).code).to.equal("ERR_INVALID_OUTPUT");
        const other = path.join(dir, "other.gguf");
        fs.writeFileSync(other, "x");
        const exists = await rejection(quantizeModel(input, other, { type: "q8_0" }));
        expect(exists.code).to.equal("ERR_OUTPUT_EXISTS");
        expect(exists.message).to.include("overwrite: true");
        expect((await rejection(quantizeModel(input, dir, { type: "q8_0", overwrite: true }))).code).to.equal("ERR_INVALID_OUTPUT");
        const nowhere = await rejection(quantizeModel(input, path.join(dir, "missing", "o.gguf"), { type: "q8_0" }));
        expect(nowhere.code).to.equal("ERR_INVALID_OUTPUT");
        expect(nowhere.message).to.include("does not exist");
        expect(sha(input)).to.equal(before);
        expect(fs.readFileSync(other, "utf8")).to.equal("x");
        expect(fs.readdirSync(dir).sort()).to.deep.equal(["in.gguf", "other.gguf"]); // no partial files
    });
});

describe("flag parsing (the CLI's and the scripts')", function () {
    const options = { keep: { type: "string" }, log: { type: "string" }, threads: { type: "string" }, json: { type: "boolean" } } as const;
    const usageError = (argv: string[]): string => {
        let err: unknown;
        try { parseFlags(argv, options); } catch (e) { err = e; }
        expect(err, argv.join(" ")).to.be.instanceOf(UsageError);
        expect((err as Error).message).to.not.include("\n");
        return (err as Error).message;
    };

    it("never takes the next flag as a value", function () {
        expect(usageError(["--keep", "--log", "x"])).to.equal('--keep needs a value (for a value that starts with "--", write --keep=VALUE)');
        expect(usageError(["--keep", "--json"])).to.include("--keep needs a value");
        expect(usageError(["--keep"])).to.include("--keep needs a value");
        expect(parseFlags(["--keep=--log", "--log", "x"], options).values).to.deep.equal({ keep: "--log", log: "x" });
    });

    it("takes a value that starts with one dash (negative numbers, -x) and --flag=-value", function () {
        expect(parseFlags(["--threads", "-1", "--keep", "-x"], options).values).to.deep.equal({ threads: "-1", keep: "-x" });
        expect(parseFlags(["--threads=-1"], options).values).to.deep.equal({ threads: "-1" });
    });

    it("unknown flags, values for boolean flags and stray arguments are one-line usage errors", function () {
        expect(usageError(["--nope"])).to.equal("unknown option --nope");
        expect(usageError(["--json=1"])).to.equal("--json takes no value");
        expect(usageError(["stray"])).to.equal('unexpected argument "stray"');
    });

    it("a script refuses a flag as a value: exit 2, one line plus its usage, no work done", function () {
        this.timeout(60_000);
        const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "phi-script-args-"));
        try {
            const r = spawnSync(process.execPath, [path.join(packageRoot, "dist", "scripts", "malformed-corpus.js"), "--out", "--count", "0"], { cwd, encoding: "utf8" });
            expect(r.status, r.stderr).to.equal(2);
            expect(r.stderr.split("\n")[0]).to.equal('malformed-corpus: --out needs a value (for a value that starts with "--", write --out=VALUE)');
            expect(r.stderr).to.include("usage: node dist/scripts/malformed-corpus.js");
            expect(fs.readdirSync(cwd)).to.deep.equal([]);
            for (const [script, args] of [["fuzz.js", ["--count", "x"]], ["soak.js", ["--cycles", "0"]], ["bench.js", ["--json", "--quick"]], ["bench.js", ["--threads", "-1"]]] as const) {
                const b = spawnSync(process.execPath, [path.join(packageRoot, "dist", "scripts", script), ...args], { cwd, encoding: "utf8" });
                expect(b.status, `${script} ${args.join(" ")}: ${b.stderr}`).to.equal(2);
                expect(b.stderr).to.match(/^\S+: --\S+ /).and.include("usage:");
            }
        } finally {
            fs.rmSync(cwd, { recursive: true, force: true });
        }
    });
});
