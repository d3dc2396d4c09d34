#!/usr/bin/env node
// Unpacks the llama.cpp release that node-llama-cpp's prebuilt libraries were built from
// (node-llama-cpp/llama/gitRelease.bundle) into deps/llama.cpp: the headers our addon compiles against,
// the sources `npm run build:source` builds, and models/ggml-vocab-gpt-2.gguf for the test-model writer.
// Nothing from the bundle is committed; this runs before every build and is a no-op when up to date.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { findLlamaBundle } from "./llama-bundle.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const dest = path.join(root, "deps", "llama.cpp");
const stampFile = path.join(dest, ".phi-agent-release.json");

function fail(message) {
    console.error(`setup-llama: ${message}`);
    process.exit(1);
}

const { bundle, info, nlcVersion, bundleSize } = findLlamaBundle(root, fail);
const want = { tag: info.tag, nodeLlamaCpp: nlcVersion, bundleSize };

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
