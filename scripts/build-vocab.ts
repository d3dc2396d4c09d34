/**
 * Writes the compact GPT-2 vocabulary the test-model writer needs (dist/src/testModel/gpt2-vocab.json.gz) from
 * llama.cpp's models/ggml-vocab-gpt-2.gguf (unpacked into deps/ by scripts/setup-llama.mjs), so makeTestModel()
 * and `phi-agent make-test-model` work from the installed npm package, which has no deps/. The data keeps
 * llama.cpp's MIT license text. Skipped when the output is newer than the GGUF. Part of `npm run build`.
 */
import fs from "node:fs";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { gpt2VocabPath, packagedVocabPath, readGPT2VocabGGUF, type PackagedVocab } from "../src/testModel/vocab.js";
import { packageRoot } from "../src/native/binding.js";
import { scriptArgs } from "./args.js";

async function main(): Promise<void> {
    const force = scriptArgs("build-vocab", "usage: node dist/scripts/build-vocab.js [--force]", { force: { type: "boolean" } }, (v) => v.force === true);
    const source = gpt2VocabPath();
    const out = packagedVocabPath();
    if (!fs.existsSync(source)) {
        if (fs.existsSync(out)) return; // a package without deps/ that already has its copy
        throw new Error(`build-vocab: ${source} is missing; run \`node scripts/setup-llama.mjs\` first`);
    }
    if (fs.existsSync(out) && fs.statSync(out).mtimeMs >= fs.statSync(source).mtimeMs && !force) return;
    const v = await readGPT2VocabGGUF(source);
    const license = fs.readFileSync(path.join(packageRoot, "deps", "llama.cpp", "LICENSE"), "utf8");
    const data: PackagedVocab = {
        source: "llama.cpp models/ggml-vocab-gpt-2.gguf (GPT-2's byte-level BPE vocabulary and merges)",
        license,
        tokens: v.tokens,
        tokenTypes: Array.from(v.tokenTypes),
        merges: v.merges,
    };
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const tmp = `${out}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, gzipSync(JSON.stringify(data), { level: 9 }));
    fs.renameSync(tmp, out);
    console.log(`build-vocab: wrote ${path.relative(packageRoot, out)} (${(fs.statSync(out).size / 2 ** 20).toFixed(2)} MiB)`);
}

main().catch((err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
});
