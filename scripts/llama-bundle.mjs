// Where the llama.cpp release behind node-llama-cpp's prebuilt libraries is: its git bundle
// (node-llama-cpp/llama/gitRelease.bundle) and release info. One lookup for scripts/setup-llama.mjs and
// scripts/build-llama-server.mjs.
import fs from "node:fs";
import path from "node:path";

// Node's package lookup: node_modules of this folder and each parent (package.json "exports" hide package.json).
function findPackageDir(root, name) {
    for (let dir = root; ; dir = path.dirname(dir)) {
        const candidate = path.join(dir, "node_modules", name);
        if (fs.existsSync(path.join(candidate, "package.json"))) return candidate;
        if (path.dirname(dir) === dir) return undefined;
    }
}

/**
 * The bundle of node-llama-cpp as installed for `root`: { nlcDir, bundle, info (llama.cpp.info.json), nlcVersion,
 * bundleSize }. Calls `fail(message)` (which must not return) when it is not there.
 */
export function findLlamaBundle(root, fail) {
    const nlcDir = findPackageDir(root, "node-llama-cpp");
    if (!nlcDir) fail("node-llama-cpp is not installed. Run `npm ci` in the project root first.");
    const bundle = path.join(nlcDir, "llama", "gitRelease.bundle");
    if (!fs.existsSync(bundle)) fail(`${bundle} is missing; reinstall node-llama-cpp (npm ci).`);
    const info = JSON.parse(fs.readFileSync(path.join(nlcDir, "llama", "llama.cpp.info.json"), "utf8"));
    const nlcVersion = JSON.parse(fs.readFileSync(path.join(nlcDir, "package.json"), "utf8")).version;
    return { nlcDir, bundle, info, nlcVersion, bundleSize: fs.statSync(bundle).size };
}
