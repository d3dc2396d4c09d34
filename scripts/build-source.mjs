#!/usr/bin/env node
// npm run build:source -- --backend cpu|cuda|vulkan|metal
// Builds llama.cpp (from deps/llama.cpp, the release node-llama-cpp ships) and the addon with cmake-js, for
// platforms or GPU setups without prebuilt libraries. Output: build/llama/bin (libraries, picked up automatically
// by the loader: build/llama/backend.txt names the backend) and build/Release/phi_agent.node.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({ options: { backend: { type: "string", default: "cpu" }, jobs: { type: "string" } } });
const backend = values.backend;
if (!["cpu", "cuda", "vulkan", "metal"].includes(backend)) {
    console.error(`build:source: --backend must be cpu, cuda, vulkan or metal, got "${backend}"`);
    process.exit(2);
}
execFileSync(process.execPath, [path.join(root, "scripts", "setup-llama.mjs")], { stdio: "inherit" });

const require = createRequire(import.meta.url);
let cmakeJs;
try {
    cmakeJs = require.resolve("cmake-js/bin/cmake-js");
} catch {
    console.error("build:source: cmake-js is not installed; run `npm ci` first (it is a devDependency).");
    process.exit(1);
}
const jobs = values.jobs ?? String(os.availableParallelism?.() ?? os.cpus().length);
const nodeDir = path.resolve(path.dirname(process.execPath), "..");
const args = [cmakeJs, "compile", "--directory", path.join(root, "native"), "--out", path.join(root, "build", "cmake"),
    "--config", "Release", `--CDPHI_BACKEND=${backend}`, "--parallel", jobs];
if (fs.existsSync(path.join(nodeDir, "include", "node", "node_api.h"))) args.push("--CDCMAKE_JS_INC=" + path.join(nodeDir, "include", "node"));
console.log(`build:source: building llama.cpp (${backend}) and the addon; this takes a while`);
fs.rmSync(path.join(root, "build", "llama", "backend.txt"), { force: true });
try {
    execFileSync(process.execPath, args, { cwd: root, stdio: "inherit", env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: jobs } });
} catch {
    console.error(`build:source: the ${backend} build failed; see the compiler output above (CUDA needs nvcc, Vulkan the Vulkan SDK).`);
    process.exit(1);
}
fs.writeFileSync(path.join(root, "build", "llama", "backend.txt"), backend + "\n");
console.log(`build:source: done. Libraries in build/llama/bin (${backend}); addon in build/Release/phi_agent.node`);
