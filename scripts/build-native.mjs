#!/usr/bin/env node
// Builds the addon with node-gyp against deps/llama.cpp's headers (run scripts/setup-llama.mjs first).
//   node scripts/build-native.mjs             build/Release/phi_agent.node (skipped when up to date)
//   node scripts/build-native.mjs --prebuild  also copies it to prebuilds/<platform>-<arch>/phi_agent.napi.node,
//                                             the Node-API 8 binary `npm pack` ships (one binary for every Node >= 20)
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { values: args } = parseArgs({ options: { prebuild: { type: "boolean" }, force: { type: "boolean" } } });
const output = path.join(root, "build", "Release", "phi_agent.node");

function newestInput() {
    let newest = 0;
    const visit = (p) => {
        const st = fs.statSync(p);
        if (st.isDirectory()) for (const e of fs.readdirSync(p)) visit(path.join(p, e));
        else newest = Math.max(newest, st.mtimeMs);
    };
    visit(path.join(root, "native"));
    visit(path.join(root, "binding.gyp"));
    visit(path.join(root, "deps", "llama.cpp", "include"));
    return newest;
}

const upToDate = fs.existsSync(output) && fs.statSync(output).mtimeMs >= newestInput() && !args.force;
if (!upToDate) {
    const require = createRequire(import.meta.url);
    let gyp;
    try {
        gyp = require.resolve("node-gyp/bin/node-gyp.js");
    } catch {
        console.error("build-native: node-gyp is not installed; run `npm ci` (it is a devDependency).");
        process.exit(1);
    }
    const configured = fs.existsSync(path.join(root, "build", "Makefile")) || fs.existsSync(path.join(root, "build", "binding.sln"));
    const jobs = ["--jobs", "max"];
    // Build offline against this Node's own headers when it ships them (node-gyp would otherwise download them).
    const nodeDir = path.resolve(path.dirname(process.execPath), "..");
    const extra = !process.env.npm_config_nodedir && fs.existsSync(path.join(nodeDir, "include", "node", "node_api.h"))
        ? [`--nodedir=${nodeDir}`] : [];
    try {
        if (!configured) execFileSync(process.execPath, [gyp, "configure", ...extra], { cwd: root, stdio: "inherit" });
        execFileSync(process.execPath, [gyp, "build", ...jobs, ...extra], { cwd: root, stdio: "inherit" });
    } catch {
        console.error("build-native: compiling the addon failed (needs a C++17 compiler and Python; see README).");
        process.exit(1);
    }
}

if (args.prebuild) {
    const dir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(output, path.join(dir, "phi_agent.napi.node"));
    console.log(`build-native: wrote ${path.relative(root, path.join(dir, "phi_agent.napi.node"))} (Node-API 8)`);
}
