#!/usr/bin/env node
// One-time build of llama.cpp's own `llama-server` (CPU only), the baseline `npm run bench:server` compares
// `phi-agent serve` against. Sources: the llama.cpp release node-llama-cpp ships as a git bundle
// (node_modules/node-llama-cpp/llama/gitRelease.bundle), cloned into deps/llama-server/src; only the
// llama-server target is built, into deps/llama-server/build. Nothing here is committed (deps/ is ignored).
//
//   node scripts/build-llama-server.mjs [--jobs N] [--force]
//
// Prints the binary's path when done: deps/llama-server/build/bin/llama-server (relative to the project root).
// Running it again is a no-op while the binary exists and the bundle is unchanged (--force rebuilds).
// The build is CPU only with GGML_NATIVE=ON (tuned for this machine: the strongest baseline), no web UI,
// no OpenSSL, no downloads. It takes a long time on a small machine; run it under `nice -n 19` in the background.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { findLlamaBundle } from "./llama-bundle.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const base = path.join(root, "deps", "llama-server");
const src = path.join(base, "src");
const build = path.join(base, "build");
const binary = path.join(build, "bin", process.platform === "win32" ? "llama-server.exe" : "llama-server");
const stampFile = path.join(base, "stamp.json");

function fail(message) {
    console.error(`build-llama-server: ${message}`);
    process.exit(1);
}

let values;
try {
    ({ values } = parseArgs({ options: { jobs: { type: "string" }, force: { type: "boolean", default: false } } }));
} catch (err) {
    console.error(`build-llama-server: ${err.message}\nusage: node scripts/build-llama-server.mjs [--jobs N] [--force]`);
    process.exit(2);
}
const jobs = values.jobs ?? String(os.availableParallelism?.() ?? os.cpus().length);
if (!/^[1-9][0-9]*$/.test(jobs)) {
    console.error(`build-llama-server: --jobs must be a positive integer, got "${jobs}"`);
    process.exit(2);
}

const { bundle, info, bundleSize } = findLlamaBundle(root, fail);
const want = { tag: info.tag, bundleSize };
const rel = path.relative(root, binary);

if (!values.force && fs.existsSync(binary) && fs.existsSync(stampFile)) {
    const have = JSON.parse(fs.readFileSync(stampFile, "utf8"));
    if (have.tag === want.tag && have.bundleSize === want.bundleSize) {
        console.log(`build-llama-server: up to date (llama.cpp ${want.tag}): ${rel}`);
        process.exit(0);
    }
}

function run(cmd, args, opts = {}) {
    console.log(`build-llama-server: ${cmd} ${args.join(" ")}`);
    execFileSync(cmd, args, { stdio: "inherit", ...opts });
}

try {
    execFileSync("cmake", ["--version"], { stdio: "ignore" });
} catch {
    fail("cmake is not installed; install cmake (>= 3.14) and a C++17 compiler.");
}

fs.rmSync(stampFile, { force: true });
if (!fs.existsSync(path.join(src, "CMakeLists.txt")) || values.force) {
    fs.rmSync(src, { recursive: true, force: true });
    fs.mkdirSync(base, { recursive: true });
    try {
        run("git", ["-c", "advice.detachedHead=false", "clone", "--quiet", bundle, src]);
    } catch (err) {
        fail(`could not clone ${bundle} (${err.message}). Install git.`);
    }
}

let generator = [];
try {
    execFileSync("ninja", ["--version"], { stdio: "ignore" });
    generator = ["-G", "Ninja"];
} catch { /* the platform's default generator */ }

try {
    run("cmake", ["-S", src, "-B", build, ...generator,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DGGML_NATIVE=ON",
        "-DGGML_CUDA=OFF", "-DGGML_VULKAN=OFF", "-DGGML_METAL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF"]);
    run("cmake", ["--build", build, "--config", "Release", "--target", "llama-server", "--parallel", jobs]);
} catch {
    fail("the build failed; see the compiler output above.");
}
if (!fs.existsSync(binary)) fail(`the build finished but ${rel} is missing.`);
fs.writeFileSync(stampFile, JSON.stringify(want, null, 2) + "\n");
console.log(`build-llama-server: done (llama.cpp ${want.tag}): ${rel}`);
