/**
 * The Phi-2 vocabulary, rebuilt from llama.cpp's GPT-2 vocab GGUF (no downloads).
 *
 * Where the GPT-2 vocabulary comes from, in this order: PHI_GPT2_VOCAB (a GGUF path); the compact copy the build
 * writes next to this module (gpt2-vocab.json.gz, from deps/llama.cpp/models/ggml-vocab-gpt-2.gguf by
 * scripts/build-vocab.ts; shipped in the npm package with llama.cpp's MIT notice inside); deps/llama.cpp's GGUF.
 *
 * microsoft/phi-2 uses the GPT-2 byte-level BPE (50257 tokens, same merges) plus 38 added tokens, and the
 * model's vocab_size is 51200. convert_hf_to_gguf.py (get_vocab_base / _set_vocab_gpt2) turns that into:
 *  - ids 0..50255: GPT-2 tokens, NORMAL; 50256 "<|endoftext|>": CONTROL (special added token)
 *  - ids 50257..50286: runs of 31 down to 2 spaces, ids 50287..50294: runs of 9 down to 2 tabs. These are
 *    non-special added tokens, so they become USER_DEFINED and their text is stored raw (" " x n, "\t" x n),
 *    not in byte-level form ("Ġ"/"ĉ"): tokenizer.vocab holds added tokens by their content, and llama.cpp
 *    matches USER_DEFINED tokens on the raw input text before BPE.
 *  - ids 50295..51199: "[PAD{id}]", UNUSED (ids the HF tokenizer does not define, up to vocab_size)
 *  - tokenizer.ggml.pre "phi-2", bos = eos = unk = 50256, add_bos_token false.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { gunzipSync } from "node:zlib";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { PhiAgentError } from "../errors.js";
import { readGGUF } from "../gguf/reader.js";
import { LlamaTokenType, type GGUFKV } from "../gguf/types.js";
import { kv } from "../gguf/writer.js";

export const PHI2_VOCAB_SIZE = 51200;
export const GPT2_VOCAB_SIZE = 50257;
export const ENDOFTEXT_ID = 50256;
/** First and last id of the 38 added whitespace tokens. */
export const FIRST_WHITESPACE_ID = 50257;
export const LAST_WHITESPACE_ID = 50294;

export interface Phi2Vocab {
    tokens: string[];
    tokenTypes: Int32Array;
    merges: string[];
    bosId: number;
    eosId: number;
    unkId: number;
}

/** The package root: the nearest folder above this module with a package.json. */
export function packageRoot(): string {
    let dir = dirname(fileURLToPath(import.meta.url));
    for (;;) {
        if (existsSync(join(dir, "package.json"))) return dir;
        const up = dirname(dir);
        if (up === dir) throw new PhiAgentError("ERR_MODEL_NOT_FOUND", "Cannot locate the llm-phi-agent package root (no package.json above this module)");
        dir = up;
    }
}

/** Path of llama.cpp's GPT-2 vocab GGUF (env PHI_GPT2_VOCAB overrides). */
export function gpt2VocabPath(): string {
    const env = process.env["PHI_GPT2_VOCAB"];
    if (env) return resolve(env);
    return join(packageRoot(), "deps", "llama.cpp", "models", "ggml-vocab-gpt-2.gguf");
}

/** Path of the compact GPT-2 vocabulary the build writes next to this module (and the npm package ships). */
export function packagedVocabPath(): string {
    return fileURLToPath(new URL("./gpt2-vocab.json.gz", import.meta.url));
}

/** The GPT-2 vocabulary as llama.cpp's GGUF stores it (tokens, token types, merges). */
export interface GPT2VocabSource {
    tokens: string[];
    tokenTypes: number[] | Int32Array;
    merges: string[];
}

/** The packaged file's content: the GGUF's three arrays, plus where they came from and their license. */
export interface PackagedVocab extends GPT2VocabSource {
    source: string;
    license: string;
}

/** Reads the GPT-2 arrays from llama.cpp's ggml-vocab-gpt-2.gguf. */
export async function readGPT2VocabGGUF(path: string): Promise<GPT2VocabSource> {
    const h = await readGGUF(path);
    return {
        tokens: h.metadata["tokenizer.ggml.tokens"] as string[],
        tokenTypes: h.metadata["tokenizer.ggml.token_type"] as Int32Array,
        merges: h.metadata["tokenizer.ggml.merges"] as string[],
    };
}

async function readSource(): Promise<{ path: string; source: GPT2VocabSource }> {
    const env = process.env["PHI_GPT2_VOCAB"];
    const packaged = packagedVocabPath();
    if (!env && existsSync(packaged)) {
        const data = JSON.parse(gunzipSync(await readFile(packaged)).toString("utf8")) as PackagedVocab;
        return { path: packaged, source: data };
    }
    const path = gpt2VocabPath();
    if (!existsSync(path)) {
        throw new PhiAgentError("ERR_MODEL_NOT_FOUND",
            `GPT-2 vocabulary not found at ${path} nor at ${packaged}; run \`npm run build\` (it unpacks deps/llama.cpp and writes ${packaged}) or set PHI_GPT2_VOCAB to ggml-vocab-gpt-2.gguf`,
            { details: { path } });
    }
    return { path, source: await readGPT2VocabGGUF(path) };
}

/** The added whitespace token texts by id: 50257 = 31 spaces ... 50286 = 2 spaces, 50287 = 9 tabs ... 50294 = 2 tabs. */
export function phi2AddedWhitespaceTokens(): Map<number, string> {
    const m = new Map<number, string>();
    let id = FIRST_WHITESPACE_ID;
    for (let n = 31; n >= 2; n--) m.set(id++, " ".repeat(n));
    for (let n = 9; n >= 2; n--) m.set(id++, "\t".repeat(n));
    return m;
}

let cached: Promise<Phi2Vocab> | undefined;

/** Loads (once per process) the Phi-2 vocabulary. */
export function loadPhi2Vocab(): Promise<Phi2Vocab> {
    cached ??= load().catch((err) => {
        cached = undefined;
        throw err;
    });
    return cached;
}

async function load(): Promise<Phi2Vocab> {
    const { path, source } = await readSource();
    const srcTokens: unknown = source.tokens;
    const srcTypes: unknown = source.tokenTypes;
    const srcMerges: unknown = source.merges;
    if (!Array.isArray(srcTokens) || srcTokens.length !== GPT2_VOCAB_SIZE || !(srcTypes instanceof Int32Array || Array.isArray(srcTypes)) ||
        srcTypes.length !== GPT2_VOCAB_SIZE || !Array.isArray(srcMerges) || srcTokens[ENDOFTEXT_ID] !== "<|endoftext|>") {
        throw new PhiAgentError("ERR_INVALID_GGUF", `${path} is not llama.cpp's GPT-2 vocabulary (expected ${GPT2_VOCAB_SIZE} tokens ending in <|endoftext|>)`);
    }
    const tokens = (srcTokens as string[]).slice();
    const tokenTypes = new Int32Array(PHI2_VOCAB_SIZE);
    tokenTypes.set(srcTypes as ArrayLike<number>);
    tokenTypes[ENDOFTEXT_ID] = LlamaTokenType.CONTROL;
    for (const [id, text] of phi2AddedWhitespaceTokens()) {
        tokens[id] = text;
        tokenTypes[id] = LlamaTokenType.USER_DEFINED;
    }
    for (let id = LAST_WHITESPACE_ID + 1; id < PHI2_VOCAB_SIZE; id++) {
        tokens[id] = `[PAD${id}]`;
        tokenTypes[id] = LlamaTokenType.UNUSED;
    }
    return {
        tokens,
        tokenTypes,
        merges: (srcMerges as string[]).slice(),
        bosId: ENDOFTEXT_ID,
        eosId: ENDOFTEXT_ID,
        unkId: ENDOFTEXT_ID,
    };
}

/** The tokenizer.* metadata of a Phi-2 GGUF, typed as llama.cpp expects. */
export function phi2VocabKV(v: Phi2Vocab): GGUFKV[] {
    return [
        kv.str("tokenizer.ggml.model", "gpt2"),
        kv.str("tokenizer.ggml.pre", "phi-2"),
        kv.strArr("tokenizer.ggml.tokens", v.tokens),
        kv.i32Arr("tokenizer.ggml.token_type", v.tokenTypes),
        kv.strArr("tokenizer.ggml.merges", v.merges),
        kv.u32("tokenizer.ggml.bos_token_id", v.bosId),
        kv.u32("tokenizer.ggml.eos_token_id", v.eosId),
        kv.u32("tokenizer.ggml.unknown_token_id", v.unkId),
        kv.bool("tokenizer.ggml.add_bos_token", false),
    ];
}
