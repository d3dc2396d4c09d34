#!/usr/bin/env node
// Unpacks the llama.cpp release that node-llama-cpp's prebuilt libraries were built from
// (node-llama-cpp/llama/gitRelease.bundle) into deps/llama.cpp: the headers our addon compiles against,
// the sources `npm run build:source` builds, and models/ggml-vocab-gpt-2.gguf for the test-model writer.
// Nothing from the bundle is committed; this runs before every build and is a no-op when up to date.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const dest = path.join(root, "deps", "llama.cpp");
const stampFile = path.join(dest, ".phi-agent-release.json");

function fail(message) {
    console.error(`setup-llama: ${message}`);
    process.exit(1);
}

// Node's package lookup: node_modules of this folder and each parent (package.json "exports" hide package.json).
function findPackageDir(name) {
    for (let dir = root; ; dir = path.dirname(dir)) {
        const candidate = path.join(dir, "node_modules", name);
        if (fs.existsSync(path.join(candidate, "package.json"))) return candidate;
        if (path.dirname(dir) === dir) return undefined;
    }
}
const nlcDir = findPackageDir("node-llama-cpp");
if (!nlcDir) fail("node-llama-cpp is not installed. Run `npm ci` in the project root first.");
const bundle = path.join(nlcDir, "llama", "gitRelease.bundle");
if (!fs.existsSync(bundle)) fail(`${bundle} is missing; reinstall node-llama-cpp (npm ci).`);
const info = JSON.parse(fs.readFileSync(path.join(nlcDir, "llama", "llama.cpp.info.json"), "utf8"));
const nlcVersion = JSON.parse(fs.readFileSync(path.join(nlcDir, "package.json"), "utf8")).version;
const want = { tag: info.tag, nodeLlamaCpp: nlcVersion, bundleSize: fs.statSync(bundle).size };

if (fs.existsSync(stampFile)) {
    const have = JSON.parse(fs.readFileSync(stampFile, "utf8"));
    if (have.tag === want.tag && have.nodeLlamaCpp === want.nodeLlamaCpp && have.bundleSize === want.bundleSize
        && fs.existsSync(path.join(dest, "include", "llama.h"))) {
        process.exit(0);
    }
}

console.log(`setup-llama: unpacking llama.cpp ${want.tag} (node-llama-cpp ${nlcVersion}) into deps/llama.cpp`);
fs.rmSync(dest, { recursive: true, force: true });
fs.mkdirSync(path.dirname(dest), { recursive: true });
try {
    execFileSync("git", ["-c", "advice.detachedHead=false", "clone", "--quiet", bundle, dest], { stdio: "inherit" });
} catch (err) {
    fail(`could not unpack ${bundle} with git (${err.message}). Install git and run \`npm run setup:llama\`.`);
}
fs.rmSync(path.join(dest, ".git"), { recursive: true, force: true });
fs.writeFileSync(stampFile, JSON.stringify(want, null, 2) + "\n");
