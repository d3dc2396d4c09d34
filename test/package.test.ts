/**
 * The published package: `npm pack` carries the prebuilt addon, and the tarball installs into an empty project
 * with --ignore-scripts and no compiler on PATH (what npm 11 does by default for dependencies), then generates.
 */
import { expect } from "chai";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { packageRoot } from "../src/native/binding.js";
import { tinyModel } from "./helpers/models.js";

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

    it("installs from the packed tarball with --ignore-scripts and no compiler, and generates", async function () {
        const modelPath = await tinyModel("f32");
        // The prebuilt addon that `npm run prebuild` writes (the build before the tests left it up to date).
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
        const env: NodeJS.ProcessEnv = { HOME: process.env.HOME, PATH: bin, npm_config_cache: process.env.npm_config_cache };
        for (const tool of ["cc", "gcc", "g++", "c++", "make", "python3", "cmake"]) {
            expect(spawnSync(tool, ["--version"], { env }).error, `${tool} must not be on PATH`).to.exist;
        }
        const install = spawnSync(process.execPath, [npm, "install", "--ignore-scripts", "--offline", "--no-audit", "--no-fund",
            "--omit=dev", path.join(work, info[0]!.filename)], { cwd: project, env, encoding: "utf8" });
        expect(install.status, install.stderr).to.equal(0);

        fs.writeFileSync(path.join(project, "main.js"), `
            import { PhiModel } from "llm-phi-agent";
            const model = await PhiModel.load({ modelPath: process.argv[2], threads: 2, contextSize: 64 });
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
    });
});
