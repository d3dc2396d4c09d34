/**
 * The published package: `npm pack` carries the prebuilt addon, and the tarball installs into an empty project
 * with --ignore-scripts and no compiler on PATH (what npm 11 does by default for dependencies), then generates,
 * and its CLI and makeTestModel() work from there.
 *
 * No network and no npm cache: the test's npm gets an empty cache of its own and, as its registry, a server on
 * 127.0.0.1 that serves the runtime dependency closure of package-lock.json, packed from the copies `npm ci` put in
 * node_modules/ (the same published files, byte for byte what the registry would send). The optional GPU variants
 * of the llama.cpp libraries are left out (404), as an install where they are unavailable would.
 */
import { expect } from "chai";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { librarySets, packageRoot } from "../src/native/binding.js";
import { TEST_THREADS, tinyModel } from "./helpers/models.js";

function npmCli(): string {
    // npm's own entry script next to this Node (so PATH can be emptied of compilers).
    const candidates = [
        process.env.npm_execpath,
        path.join(path.dirname(process.execPath), "..", "lib", "node_modules", "npm", "bin", "npm-cli.js"),
        path.join(path.dirname(process.execPath), "node_modules", "npm", "bin", "npm-cli.js"),
    ];
    const found = candidates.find((c) => c && c.endsWith(".js") && fs.existsSync(c));
    if (!found) throw new Error("cannot find npm-cli.js next to this Node");
    return found;
}

describe("npm package", function () {
    this.timeout(600_000);
    let work: string;

    before(function () {
        work = fs.mkdtempSync(path.join(os.tmpdir(), "phi-pack-"));
    });
    after(function () {
        fs.rmSync(work, { recursive: true, force: true });
    });

    it("no npm pre/post hook writes prebuilds/ (the prebuild step is build:prebuild, run on purpose)", function () {
        const scripts = (JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts;
        expect(scripts["build:prebuild"]).to.include("--prebuild");
        for (const [name, body] of Object.entries(scripts)) {
            const hookOf = /^(pre|post)(.+)$/.exec(name)?.[2];
            if (hookOf === undefined || !(hookOf in scripts)) continue; // not a hook of another script
            expect(body, `"${name}" runs around every "npm run ${hookOf}"`).to.not.include("--prebuild");
        }
        const workflow = fs.readFileSync(path.join(packageRoot, ".github", "workflows", "prebuild.yml"), "utf8");
        expect(workflow).to.include("npm run build:prebuild");
    });

    it("installs from the packed tarball with --ignore-scripts and no compiler, and generates", async function () {
        const modelPath = await tinyModel("f32");
        // The prebuilt addon that `npm run build:prebuild` writes (the build before the tests left it up to date).
        execFileSync(process.execPath, [path.join(packageRoot, "scripts", "build-native.mjs"), "--prebuild"], { cwd: packageRoot, stdio: "pipe" });
        const npm = npmCli();
        const packed = execFileSync(process.execPath, [npm, "pack", "--ignore-scripts", "--json", "--pack-destination", work], { cwd: packageRoot, encoding: "utf8" });
        const info = JSON.parse(packed) as { filename: string; files: { path: string }[] }[];
        const files = info[0]!.files.map((f) => f.path);
        expect(files).to.include(`prebuilds/${process.platform}-${process.arch}/phi_agent.napi.node`);
        expect(files).to.include("dist/src/index.js");
        expect(files.some((f) => f.endsWith(".gguf"))).to.equal(false);
        expect(files.some((f) => f.startsWith("dist/test/") || f.startsWith("build/") || f.startsWith("deps/"))).to.equal(false);

        // An empty project whose PATH holds node and nothing else: no cc, c++, make, python or git.
        const project = path.join(work, "app");
        const bin = path.join(work, "bin");
        fs.mkdirSync(project);
        fs.mkdirSync(bin);
        fs.symlinkSync(process.execPath, path.join(bin, "node"));
        fs.writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", private: true, type: "module" }));
        const cache = fs.mkdtempSync(path.join(work, "empty-npm-cache-"));
        const env: NodeJS.ProcessEnv = {
            HOME: process.env.HOME, PATH: bin, npm_config_cache: cache, npm_config_registry: "http://127.0.0.1:9/",
            npm_config_update_notifier: "false",
        };
        for (const tool of ["cc", "gcc", "g++", "c++", "make", "python3", "cmake"]) {
            expect(spawnSync(tool, ["--version"], { env }).error, `${tool} must not be on PATH`).to.exist;
        }
        // npm resolves our dependencies from a registry on loopback that serves exactly the runtime closure of
        // package-lock.json (packed from node_modules/), nested versions included (ajv keeps fast-uri 3 under it)
        const registry = await localRegistry(npm, work);
        let install: { status: number | null; stderr: string };
        try {
            install = await spawnAsync(process.execPath, [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund",
                "--omit=dev", path.join(work, info[0]!.filename)], { cwd: project, env: { ...env, npm_config_registry: registry.url } });
        } finally {
            await registry.close();
        }
        expect(install.status, install.stderr).to.equal(0);
        expect(registry.missing.filter((name) => !name.startsWith("@node-llama-cpp/")), "packages npm asked for that the closure lacks").to.deep.equal([]);
        expect(fs.existsSync(path.join(project, "node_modules", "llm-phi-agent", "deps")), "no llama.cpp sources in the install").to.equal(false);

        fs.writeFileSync(path.join(project, "main.js"), `
            import { PhiModel } from "llm-phi-agent";
            const model = await PhiModel.load({ modelPath: process.argv[2], threads: ${TEST_THREADS}, contextSize: 64 });
            const r = await model.generate("The benefits of multi-agent systems include", { maxTokens: 8 });
            console.log(JSON.stringify({ tokens: r.tokens, finishReason: r.finishReason, addon: model.info.runtime.libraryPath }));
            await model.dispose();
        `);
        const run = spawnSync(process.execPath, ["main.js", modelPath], { cwd: project, env, encoding: "utf8" });
        expect(run.status, run.stderr).to.equal(0);
        const out = JSON.parse(run.stdout.trim().split("\n").pop()!) as { tokens: number[]; finishReason: string; addon: string };
        expect(out.tokens).to.have.length(8);
        expect(out.finishReason).to.equal("length");
        expect(out.addon.startsWith(project)).to.equal(true, "uses the libraries installed with the package");

        // The HTTP server from its own entry point (llm-phi-agent/server), on loopback, port 0.
        fs.writeFileSync(path.join(project, "serve.js"), `
            import { PhiServer } from "llm-phi-agent/server";
            const server = await PhiServer.start({ modelPath: process.argv[2], host: "127.0.0.1", port: 0, load: { threads: 1, contextSize: 64 }, log: () => {} });
            await server.ready;
            const r = await fetch(server.url + "/v1/completions", { method: "POST", headers: { "content-type": "application/json" },
                body: JSON.stringify({ model: server.modelId, prompt: "Hello", max_tokens: 3 }) });
            console.log(JSON.stringify({ status: r.status, tokens: (await r.json()).usage.completion_tokens }));
            await server.close();
        `);
        const served = await spawnAsync(process.execPath, ["serve.js", modelPath], { cwd: project, env });
        expect(served.status, served.stderr).to.equal(0);
        expect(JSON.parse(served.stdout.trim())).to.deep.equal({ status: 200, tokens: 3 });

        // The CLI through npm's bin link, and the test-model writer (vocabulary and q4_k_m quantizer) from the package.
        const phiAgent = path.join(project, "node_modules", ".bin", "phi-agent");
        const cli = (...args: string[]) => spawnSync(phiAgent, args, { cwd: project, env, encoding: "utf8" });
        const version = cli("--version");
        expect(version.status, version.stderr).to.equal(0);
        expect(version.stdout.trim()).to.equal((JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { version: string }).version);
        const made = cli("make-test-model", "--out", "models/tiny-q4.gguf", "--type", "q4_k_m", "--json");
        expect(made.status, made.stderr).to.equal(0);
        expect(JSON.parse(made.stdout)).to.include({ path: path.join(project, "models", "tiny-q4.gguf"), type: "q4_k_m" });
        const gen = cli("generate", "--model", "models/tiny-q4.gguf", "--prompt", "The benefits of", "--max-tokens", "4", "--threads", String(TEST_THREADS), "--json");
        expect(gen.status, gen.stderr).to.equal(0);
        expect((JSON.parse(gen.stdout) as { tokens: number[] }).tokens).to.have.length(4);

        fs.writeFileSync(path.join(project, "make.js"), `
            import { makeTestModel, readGGUF } from "llm-phi-agent";
            const r = await makeTestModel({ out: "lib-q8.gguf", shape: "tiny", type: "q8_0", seed: 1 });
            const h = await readGGUF(r.path);
            console.log(JSON.stringify({ bytes: r.bytes, tokens: h.metadata["tokenizer.ggml.tokens"].length, fileType: h.metadata["general.file_type"] }));
        `);
        const lib = spawnSync(process.execPath, ["make.js"], { cwd: project, env, encoding: "utf8" });
        expect(lib.status, lib.stderr).to.equal(0);
        const made2 = JSON.parse(lib.stdout.trim()) as { bytes: number; tokens: number; fileType: number };
        expect(made2).to.deep.equal({ bytes: fs.statSync(path.join(project, "lib-q8.gguf")).size, tokens: 51200, fileType: 7 });
        // The README's two TypeScript snippets, run as they are from the install (the model path and device swapped
        // for the test model and the CPU): each must print what it promises.
        const snippets = readmeSnippets();
        expect(snippets).to.have.length(2);
        for (const [i, code] of snippets.entries()) {
            const file = path.join(project, `readme-${i}.mjs`);
            fs.writeFileSync(file, code.replaceAll("models/phi-2.Q4_K_M.gguf", modelPath).replace(/device: "[^"]*"/g, 'device: "cpu"'));
            const r = spawnSync(process.execPath, [file], { cwd: project, env, encoding: "utf8" });
            expect(r.status, `README snippet ${i + 1}: ${r.stderr}`).to.equal(0);
            expect(r.stdout.trim().length, `README snippet ${i + 1} prints its result`).to.be.above(0);
        }

        // the same bytes as the checkout's writer (test/makeTestModel.test.ts pins the packaged vocabulary to llama.cpp's GGUF)
        expect(sha256(path.join(project, "lib-q8.gguf"))).to.equal(sha256(await tinyModel("q8_0")));
    });
});

/** The ```ts blocks of README.md that import from "llm-phi-agent" (plain JavaScript, so they run as .mjs). */
function readmeSnippets(): string[] {
    const readme = fs.readFileSync(path.join(packageRoot, "README.md"), "utf8");
    return [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!).filter((c) => c.includes('from "llm-phi-agent"'));
}

const sha256 = (p: string) => createHash("sha256").update(fs.readFileSync(p)).digest("hex");

/** Runs a child process without blocking the event loop (the loopback registry answers meanwhile). */
function spawnAsync(cmd: string, args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }): Promise<{ status: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
        const child = spawn(cmd, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "";
        let stderr = "";
        child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
        child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
        child.on("error", reject);
        child.on("close", (status) => resolve({ status, stdout, stderr }));
    });
}

interface LockEntry { version?: string; dev?: boolean; optional?: boolean; devOptional?: boolean }

/**
 * An npm registry on 127.0.0.1 that serves our runtime dependency closure, packed from node_modules/ (where
 * `npm ci` put them, the same published files): every package package-lock.json needs outside development (the
 * direct `dependencies` and all they pull in, nested versions too), and of the optionalDependencies the llama.cpp
 * CPU libraries of this platform (the set src/native/binding.ts picks for the CPU). Any other name is a 404 (the
 * optional GPU variants, as where they are unavailable), recorded in `missing`.
 */
async function localRegistry(npm: string, dest: string): Promise<{ url: string; missing: string[]; close: () => Promise<void> }> {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as {
        dependencies?: Record<string, string>; optionalDependencies?: Record<string, string>;
    };
    const lock = JSON.parse(fs.readFileSync(path.join(packageRoot, "package-lock.json"), "utf8")) as { packages: Record<string, LockEntry> };
    const cpu = librarySets().find((set) => set.backend === "cpu" && set.source.startsWith("@node-llama-cpp/"));
    expect(cpu, "the llama.cpp CPU libraries for this platform are installed").to.not.equal(undefined);
    expect(Object.keys(pkg.optionalDependencies ?? {})).to.include(cpu!.source);
    const entries = Object.entries(lock.packages).filter(([where, e]) => where !== "" &&
        (where === `node_modules/${cpu!.source}` || (!e.dev && !e.optional && !e.devOptional)));
    for (const name of Object.keys(pkg.dependencies ?? {})) {
        expect(entries.map(([where]) => where), `package-lock.json has ${name}`).to.include(`node_modules/${name}`);
    }
    const tarballs = fs.mkdtempSync(path.join(dest, "registry-"));
    // name -> version -> { manifest, file }
    const packages = new Map<string, Map<string, { manifest: Record<string, unknown>; file: string }>>();
    for (const [where, entry] of entries) {
        const name = where.slice(where.lastIndexOf("node_modules/") + "node_modules/".length);
        const dir = path.join(packageRoot, ...where.split("/"));
        const manifest = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")) as Record<string, unknown> & { version: string };
        const wanted = pkg.dependencies?.[name] ?? pkg.optionalDependencies?.[name] ?? entry.version;
        expect(manifest.version, `${name} in node_modules is the version package.json / package-lock.json pins`).to.equal(wanted);
        const packed = execFileSync(process.execPath, [npm, "pack", "--ignore-scripts", "--json", "--pack-destination", tarballs, dir],
            { cwd: tarballs, encoding: "utf8", env: { ...process.env, npm_config_registry: "http://127.0.0.1:9/", npm_config_offline: "true" } });
        const file = path.join(tarballs, (JSON.parse(packed) as { filename: string }[])[0]!.filename);
        if (!packages.has(name)) packages.set(name, new Map());
        packages.get(name)!.set(manifest.version, { manifest, file });
    }
    const missing: string[] = [];
    let base = "";
    const server = http.createServer((req, res) => {
        const url = decodeURIComponent((req.url ?? "/").split("?")[0]!.slice(1));
        const tarball = /^-\/(.+)\/(\d[^/]*)\.tgz$/.exec(url);
        if (tarball) {
            const found = packages.get(tarball[1]!)?.get(tarball[2]!);
            if (!found) return res.writeHead(404).end();
            res.writeHead(200, { "content-type": "application/octet-stream" });
            return fs.createReadStream(found.file).pipe(res);
        }
        const versions = packages.get(url);
        if (!versions) {
            missing.push(url);
            res.writeHead(404, { "content-type": "application/json" });
            return res.end(JSON.stringify({ error: "not found" }));
        }
        const body: Record<string, unknown> = { name: url, "dist-tags": { latest: [...versions.keys()].pop() }, versions: {} };
        for (const [version, { manifest, file }] of versions) {
            const integrity = "sha512-" + createHash("sha512").update(fs.readFileSync(file)).digest("base64");
            (body.versions as Record<string, unknown>)[version] = { ...manifest, dist: { tarball: `${base}/-/${url}/${version}.tgz`, integrity } };
        }
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return { url: `${base}/`, missing, close: () => new Promise((resolve) => server.close(() => resolve())) };
}
