/**
 * The Phi-2 sanity check that runs in TypeScript before every native load.
 *
 * llama.cpp aborts the whole process (GGML_ASSERT / abort(), which kills Node) on some malformed models, e.g.
 * block_count 0 or > 512, duplicate vocabulary strings, an unknown rope scaling type, or MoE keys on a dense
 * model. checkPhi2 refuses those (and everything else a phi2 graph needs) with a GGUFError that says what is
 * wrong, so llama.cpp only ever sees files it can load.
 *
 * Names and shapes follow deps/llama.cpp/src/models/phi2.cpp (llama_model_phi2::load_arch_tensors) and
 * llama_model_base::create_tensor_qkv; hparam rules follow llama_model_base::load_hparams.
 */
import { GGUFError } from "../errors.js";
import type { FileHandle } from "node:fs/promises";
import { openModelFile, readGGUF, readGGUFFromHandle, type ReadGGUFOptions } from "./reader.js";
import {
    GGMLType, GGUFValueType, LLAMA_FILE_TYPE_NAMES, ggmlTypeName, ggufValueTypeName,
    type GGUFHeader, type GGUFKV, type GGUFTensorInfo,
} from "./types.js";

/** llama.cpp's LLAMA_MAX_LAYERS: it GGML_ASSERTs (aborts) on block_count outside 1..512. */
export const LLAMA_MAX_LAYERS = 512;

const ROPE_SCALING_TYPES = new Set(["none", "linear", "yarn", "longrope"]);

/** Tensor types that make no sense (or crash matmul/get_rows) as phi2 weights. */
const NON_WEIGHT_TYPES = new Set<number>([
    GGMLType.I8, GGMLType.I16, GGMLType.I32, GGMLType.I64, GGMLType.F64, GGMLType.Q8_1, GGMLType.Q8_K,
]);

const SPECIAL_TOKEN_KEYS = [
    "bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id", "unknown_token_id", "seperator_token_id",
    "padding_token_id", "cls_token_id", "mask_token_id", "fim_pre_token_id", "fim_suf_token_id", "fim_mid_token_id",
    "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id", "prefix_token_id", "suffix_token_id", "middle_token_id",
].map((k) => `tokenizer.ggml.${k}`);

function fail(header: GGUFHeader, msg: string, code: "ERR_INVALID_GGUF" | "ERR_UNSUPPORTED_ARCHITECTURE" = "ERR_INVALID_GGUF"): never {
    throw new GGUFError(msg, header.path, code);
}

function findKV(header: GGUFHeader, key: string): GGUFKV | undefined {
    return header.kv.find((e) => e.key === key);
}

function describe(e: GGUFKV): string {
    return e.type === GGUFValueType.ARRAY ? `array of ${ggufValueTypeName(e.arrayType ?? -1)}` : ggufValueTypeName(e.type);
}

/** A uint32 hparam (llama.cpp's get_key<uint32_t> insists on GGUF type uint32). */
function u32(header: GGUFHeader, key: string, required: true): number;
function u32(header: GGUFHeader, key: string, required: false): number | undefined;
function u32(header: GGUFHeader, key: string, required: boolean): number | undefined {
    const e = findKV(header, key);
    if (!e) {
        if (required) fail(header, `metadata '${key}' is missing (required for phi2)`);
        return undefined;
    }
    if (e.type !== GGUFValueType.UINT32) {
        fail(header, `metadata '${key}' must be a uint32 but is a ${describe(e)}`);
    }
    return e.value as number;
}

function stringArray(header: GGUFHeader, key: string): string[] | undefined {
    const e = findKV(header, key);
    if (!e) return undefined;
    if (e.type !== GGUFValueType.ARRAY || e.arrayType !== GGUFValueType.STRING) {
        fail(header, `metadata '${key}' must be an array of strings but is a ${describe(e)}`);
    }
    return e.value as string[];
}

/** Hyperparameters of a phi2 model, as llama.cpp derives them. */
export interface Phi2HParams {
    contextLength: number;
    embeddingLength: number;
    blockCount: number;
    feedForwardLength: number;
    headCount: number;
    headCountKV: number;
    headDim: number;
    ropeDimensionCount: number;
    layerNormEpsilon: number;
    vocabSize: number;
}

function checkHParams(header: GGUFHeader): Omit<Phi2HParams, "vocabSize"> {
    const p = "phi2.";
    const contextLength = u32(header, `${p}context_length`, true);
    if (contextLength < 1) fail(header, `metadata '${p}context_length' is ${contextLength}, must be > 0`);
    const embeddingLength = u32(header, `${p}embedding_length`, true);
    if (embeddingLength < 1) fail(header, `metadata '${p}embedding_length' is ${embeddingLength}, must be > 0`);
    const blockCount = u32(header, `${p}block_count`, true);
    if (blockCount < 1 || blockCount > LLAMA_MAX_LAYERS) {
        fail(header, `metadata '${p}block_count' is ${blockCount}, must be 1..${LLAMA_MAX_LAYERS} (llama.cpp's layer limit)`);
    }
    const feedForwardLength = u32(header, `${p}feed_forward_length`, true);
    if (feedForwardLength < 1) fail(header, `metadata '${p}feed_forward_length' is ${feedForwardLength}, must be > 0`);
    const headCount = u32(header, `${p}attention.head_count`, true);
    if (headCount < 1) fail(header, `metadata '${p}attention.head_count' is ${headCount}, must be > 0`);
    if (embeddingLength % headCount !== 0) {
        fail(header, `metadata '${p}attention.head_count' ${headCount} does not divide '${p}embedding_length' ${embeddingLength}`);
    }
    const headDim = embeddingLength / headCount;
    const headCountKV = u32(header, `${p}attention.head_count_kv`, false) ?? headCount;
    if (headCountKV < 1 || headCountKV > headCount || headCount % headCountKV !== 0) {
        fail(header, `metadata '${p}attention.head_count_kv' is ${headCountKV}, must be 1..${headCount} and divide head_count ${headCount}`);
    }
    for (const k of ["key_length", "value_length"]) {
        const v = u32(header, `${p}attention.${k}`, false);
        if (v !== undefined && v !== headDim) {
            fail(header, `metadata '${p}attention.${k}' is ${v}; phi2 needs it to equal embedding_length/head_count = ${headDim}`);
        }
    }
    const ropeDimensionCount = u32(header, `${p}rope.dimension_count`, false) ?? headDim;
    if (ropeDimensionCount < 2 || ropeDimensionCount > headDim || ropeDimensionCount % 2 !== 0) {
        fail(header, `metadata '${p}rope.dimension_count' is ${ropeDimensionCount}, must be even and within 2..${headDim} (the head dimension)`);
    }
    const epsKV = findKV(header, `${p}attention.layer_norm_epsilon`);
    if (!epsKV) fail(header, `metadata '${p}attention.layer_norm_epsilon' is missing (required for phi2)`);
    if (epsKV.type !== GGUFValueType.FLOAT32) {
        fail(header, `metadata '${p}attention.layer_norm_epsilon' must be a float32 but is a ${describe(epsKV)}`);
    }
    const layerNormEpsilon = epsKV.value as number;
    if (!Number.isFinite(layerNormEpsilon) || layerNormEpsilon <= 0 || layerNormEpsilon > 1) {
        fail(header, `metadata '${p}attention.layer_norm_epsilon' is ${layerNormEpsilon}, must be in (0, 1]`);
    }
    // keys that make llama.cpp GGML_ASSERT on a dense model
    for (const k of ["expert_count", "expert_used_count", "expert_group_count", "expert_group_used_count"]) {
        const e = findKV(header, `${p}${k}`);
        if (e && !(e.type === GGUFValueType.UINT32 && e.value === 0)) {
            fail(header, `metadata '${p}${k}' is ${String(e.value)}; phi2 is a dense model (no experts)`);
        }
    }
    const nextn = findKV(header, `${p}nextn_predict_layers`);
    if (nextn && !(nextn.type === GGUFValueType.UINT32 && (nextn.value as number) <= blockCount)) {
        fail(header, `metadata '${p}nextn_predict_layers' is ${String(nextn.value)}, must be a uint32 <= block_count ${blockCount}`);
    }
    const scaling = findKV(header, `${p}rope.scaling.type`);
    if (scaling && !(scaling.type === GGUFValueType.STRING && ROPE_SCALING_TYPES.has(scaling.value as string))) {
        fail(header, `metadata '${p}rope.scaling.type' is ${JSON.stringify(scaling.value)}, must be one of ${[...ROPE_SCALING_TYPES].join(", ")}`);
    }
    for (const [k, t] of [["rope.freq_base", GGUFValueType.FLOAT32], ["rope.scaling.factor", GGUFValueType.FLOAT32]] as const) {
        const e = findKV(header, `${p}${k}`);
        if (e && e.type !== t) fail(header, `metadata '${p}${k}' must be a ${ggufValueTypeName(t)} but is a ${describe(e)}`);
    }
    return {
        contextLength, embeddingLength, blockCount, feedForwardLength, headCount, headCountKV, headDim,
        ropeDimensionCount, layerNormEpsilon,
    };
}

function checkVocab(header: GGUFHeader): number {
    const modelKV = findKV(header, "tokenizer.ggml.model");
    if (!modelKV) fail(header, `metadata 'tokenizer.ggml.model' is missing (the file has no tokenizer)`);
    if (modelKV.type !== GGUFValueType.STRING || modelKV.value !== "gpt2") {
        fail(header, `metadata 'tokenizer.ggml.model' is ${JSON.stringify(modelKV.value)}; phi2 uses the "gpt2" BPE tokenizer`);
    }
    const pre = findKV(header, "tokenizer.ggml.pre");
    if (pre && pre.type !== GGUFValueType.STRING) fail(header, `metadata 'tokenizer.ggml.pre' must be a string but is a ${describe(pre)}`);

    const tokens = stringArray(header, "tokenizer.ggml.tokens");
    if (!tokens) fail(header, `metadata 'tokenizer.ggml.tokens' is missing (the file has no vocabulary)`);
    const n = tokens.length;
    if (n < 1) fail(header, `metadata 'tokenizer.ggml.tokens' is empty`);
    if (n > 0x7fffffff) fail(header, `metadata 'tokenizer.ggml.tokens' has ${n} entries, more than llama.cpp's int32 token ids allow`);
    // llama.cpp maps text -> id and GGML_ASSERTs that the map is as large as the list (no duplicates);
    // empty strings are replaced by "[EMPTY_<id>]" first.
    const seen = new Map<string, number>();
    for (let i = 0; i < n; i++) {
        const text = tokens[i]!.length === 0 ? `[EMPTY_${i}]` : tokens[i]!;
        const prev = seen.get(text);
        if (prev !== undefined) {
            fail(header, `metadata 'tokenizer.ggml.tokens': duplicate token ${JSON.stringify(text)} at ids ${prev} and ${i} (llama.cpp would abort)`);
        }
        seen.set(text, i);
    }

    const tt = findKV(header, "tokenizer.ggml.token_type");
    if (tt) {
        if (tt.type !== GGUFValueType.ARRAY || tt.arrayType !== GGUFValueType.INT32) {
            fail(header, `metadata 'tokenizer.ggml.token_type' must be an array of int32 but is a ${describe(tt)}`);
        }
        const len = (tt.value as Int32Array).length;
        if (len !== n) fail(header, `metadata 'tokenizer.ggml.token_type' has ${len} entries but there are ${n} tokens`);
    }
    const scores = findKV(header, "tokenizer.ggml.scores");
    if (scores) {
        if (scores.type !== GGUFValueType.ARRAY || (scores.arrayType !== GGUFValueType.FLOAT32 && scores.arrayType !== GGUFValueType.INT32)) {
            fail(header, `metadata 'tokenizer.ggml.scores' must be an array of float32 but is a ${describe(scores)}`);
        }
        const len = (scores.value as Float32Array).length;
        if (len < n) fail(header, `metadata 'tokenizer.ggml.scores' has ${len} entries but there are ${n} tokens`);
    }
    const merges = stringArray(header, "tokenizer.ggml.merges");
    if (!merges) fail(header, `metadata 'tokenizer.ggml.merges' is missing (a gpt2 BPE tokenizer needs its merges)`);
    for (let i = 0; i < merges.length; i++) {
        const m = merges[i]!;
        const sp = m.indexOf(" ", 1);
        if (sp < 1 || sp === m.length - 1) {
            fail(header, `metadata 'tokenizer.ggml.merges'[${i}] is ${JSON.stringify(m)}, expected two parts separated by one space ("a b")`);
        }
    }
    for (const key of SPECIAL_TOKEN_KEYS) {
        const e = findKV(header, key);
        if (!e) continue;
        if (e.type !== GGUFValueType.UINT32) fail(header, `metadata '${key}' must be a uint32 but is a ${describe(e)}`);
        if ((e.value as number) >= n) fail(header, `metadata '${key}' is ${e.value as number}, but the vocabulary has only ${n} tokens`);
    }
    for (const k of ["add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix", "remove_extra_whitespaces"]) {
        const e = findKV(header, `tokenizer.ggml.${k}`);
        if (e && e.type !== GGUFValueType.BOOL) fail(header, `metadata 'tokenizer.ggml.${k}' must be a bool but is a ${describe(e)}`);
    }
    return n;
}

function sameShape(dims: readonly number[], want: readonly number[]): boolean {
    for (let i = 0; i < 4; i++) if ((dims[i] ?? 1) !== (want[i] ?? 1)) return false;
    return true;
}

/**
 * Refuses (GGUFError) any file llama.cpp could not load as phi2, or would abort on.
 * Returns the derived hyperparameters when the file is fine.
 */
export function checkPhi2(header: GGUFHeader): Phi2HParams {
    const archKV = findKV(header, "general.architecture");
    if (!archKV) {
        fail(header, `metadata 'general.architecture' is missing; only phi2 models are supported`, "ERR_UNSUPPORTED_ARCHITECTURE");
    }
    if (archKV.type !== GGUFValueType.STRING) {
        fail(header, `metadata 'general.architecture' must be a string but is a ${describe(archKV)}`, "ERR_UNSUPPORTED_ARCHITECTURE");
    }
    if (archKV.value !== "phi2") {
        fail(header, `architecture is ${JSON.stringify(archKV.value)}; only "phi2" (Microsoft Phi-2) is supported`, "ERR_UNSUPPORTED_ARCHITECTURE");
    }
    if (header.tensors.length === 0) {
        fail(header, `the file contains no tensors (a vocab-only GGUF?); a phi2 model needs its weights`);
    }
    const hp = checkHParams(header);
    const nVocab = checkVocab(header);

    const byName = new Map<string, GGUFTensorInfo>();
    for (const t of header.tensors) {
        if (byName.has(t.name)) fail(header, `tensor '${t.name}' appears twice`);
        byName.set(t.name, t);
    }
    const tokEmbd = byName.get("token_embd.weight");
    if (tokEmbd && tokEmbd.dims.length >= 2 && tokEmbd.dims[1] !== nVocab) {
        fail(header, `vocab count ≠ embedding rows: 'tokenizer.ggml.tokens' has ${nVocab} tokens but tensor 'token_embd.weight' has ${tokEmbd.dims[1]} rows`);
    }

    const { embeddingLength: E, feedForwardLength: F, blockCount, headDim, headCountKV } = hp;
    const gqa = headDim * headCountKV;
    const expected = new Map<string, number[]>();
    const need = (name: string, dims: number[]) => expected.set(name, dims);
    need("token_embd.weight", [E, nVocab]);
    need("output_norm.weight", [E]);
    need("output_norm.bias", [E]);
    need("output.weight", [E, nVocab]);
    need("output.bias", [nVocab]);
    for (let i = 0; i < blockCount; i++) {
        const b = `blk.${i}.`;
        need(`${b}attn_norm.weight`, [E]);
        need(`${b}attn_norm.bias`, [E]);
        if (byName.has(`${b}attn_qkv.weight`)) {
            need(`${b}attn_qkv.weight`, [E, E + 2 * gqa]);
            need(`${b}attn_qkv.bias`, [E + 2 * gqa]);
        } else {
            need(`${b}attn_q.weight`, [E, E]);
            need(`${b}attn_k.weight`, [E, gqa]);
            need(`${b}attn_v.weight`, [E, gqa]);
            need(`${b}attn_q.bias`, [E]);
            need(`${b}attn_k.bias`, [gqa]);
            need(`${b}attn_v.bias`, [gqa]);
        }
        need(`${b}attn_output.weight`, [E, E]);
        need(`${b}attn_output.bias`, [E]);
        need(`${b}ffn_up.weight`, [E, F]);
        need(`${b}ffn_up.bias`, [F]);
        need(`${b}ffn_down.weight`, [F, E]);
        need(`${b}ffn_down.bias`, [E]);
    }
    for (const [name, dims] of expected) {
        const t = byName.get(name);
        if (!t) fail(header, `tensor '${name}' is missing (phi2 with ${blockCount} blocks needs it)`);
        if (!sameShape(t.dims, dims)) {
            fail(header, `tensor '${name}' has shape [${t.dims.join(", ")}], phi2 expects [${dims.join(", ")}]`);
        }
        if (dims.length === 1) {
            if (t.type !== GGMLType.F32) fail(header, `tensor '${name}' is ${ggmlTypeName(t.type)}; norm and bias tensors must be F32`);
        } else if (NON_WEIGHT_TYPES.has(t.type)) {
            fail(header, `tensor '${name}' has type ${ggmlTypeName(t.type)}, which is not a weight type`);
        }
    }
    for (const t of header.tensors) {
        if (!expected.has(t.name)) fail(header, `unexpected tensor '${t.name}' for a phi2 model with ${blockCount} blocks`);
    }
    return { ...hp, vocabSize: nVocab };
}

export interface GGUFSummary {
    path: string;
    version: number;
    fileSize: number;
    architecture: string | undefined;
    name: string | undefined;
    contextLength: number | undefined;
    embeddingLength: number | undefined;
    feedForwardLength: number | undefined;
    layers: number | undefined;
    heads: number | undefined;
    headsKV: number | undefined;
    ropeDimensionCount: number | undefined;
    vocabSize: number | undefined;
    /** llama.cpp file type name, e.g. "Q4_K_M" (from general.file_type), or undefined */
    fileType: string | undefined;
    fileTypeId: number | undefined;
    tensorCount: number;
    /** total number of weights */
    parameterCount: number;
    /** tensor count per ggml type name */
    tensorTypes: Record<string, number>;
    /** null when checkPhi2 accepts the file, else its message */
    phi2Problem: string | null;
}

function num(header: GGUFHeader, key: string): number | undefined {
    const v = header.metadata[key];
    if (typeof v === "number") return v;
    if (typeof v === "bigint") return Number(v);
    return undefined;
}

/** Summarises a parsed header (no validation beyond the reader's). */
export function summarizeGGUF(header: GGUFHeader): GGUFSummary {
    const arch = typeof header.metadata["general.architecture"] === "string" ? header.metadata["general.architecture"] as string : undefined;
    const a = arch ?? "";
    const tokens = header.metadata["tokenizer.ggml.tokens"];
    const tensorTypes: Record<string, number> = {};
    let parameterCount = 0;
    for (const t of header.tensors) {
        const n = ggmlTypeName(t.type);
        tensorTypes[n] = (tensorTypes[n] ?? 0) + 1;
        parameterCount += t.dims.reduce((x, y) => x * y, 1);
    }
    const ft = num(header, "general.file_type");
    let phi2Problem: string | null = null;
    try {
        checkPhi2(header);
    } catch (err) {
        phi2Problem = err instanceof Error ? err.message : String(err);
    }
    return {
        path: header.path,
        version: header.version,
        fileSize: header.fileSize,
        architecture: arch,
        name: typeof header.metadata["general.name"] === "string" ? header.metadata["general.name"] as string : undefined,
        contextLength: num(header, `${a}.context_length`),
        embeddingLength: num(header, `${a}.embedding_length`),
        feedForwardLength: num(header, `${a}.feed_forward_length`),
        layers: num(header, `${a}.block_count`),
        heads: num(header, `${a}.attention.head_count`),
        headsKV: num(header, `${a}.attention.head_count_kv`),
        ropeDimensionCount: num(header, `${a}.rope.dimension_count`),
        vocabSize: Array.isArray(tokens) ? tokens.length : undefined,
        fileType: ft !== undefined ? LLAMA_FILE_TYPE_NAMES[ft] ?? `unknown(${ft})` : undefined,
        fileTypeId: ft,
        tensorCount: header.tensors.length,
        parameterCount,
        tensorTypes,
        phi2Problem,
    };
}

/** readGGUF + a summary, for the CLI's `inspect`. Throws the reader's errors (missing file, malformed GGUF). */
export async function inspectGGUF(path: string, options?: ReadGGUFOptions): Promise<{ header: GGUFHeader; summary: GGUFSummary }> {
    const header = await readGGUF(path, options);
    return { header, summary: summarizeGGUF(header) };
}

/** readGGUF + checkPhi2 by path (PhiModel.load uses openAndCheckPhi2, which keeps the checked descriptor for the load). */
export async function readAndCheckPhi2(path: string, options?: ReadGGUFOptions): Promise<{ header: GGUFHeader; hparams: Phi2HParams }> {
    const header = await readGGUF(path, options);
    return { header, hparams: checkPhi2(header) };
}

/** An open model file: the handle, and the identity of the file it reads. */
export interface CheckedModelFile {
    fh: FileHandle;
    dev: number;
    ino: number;
    size: number;
}

/**
 * readAndCheckPhi2 through one open descriptor, which it returns open: a load that reads this descriptor (see
 * PhiModel.load) reads exactly the bytes that were checked, even if the path is renamed or replaced meanwhile.
 * The caller closes `file.fh` (on success; on a throw it is closed here).
 */
export async function openAndCheckPhi2(path: string, options?: ReadGGUFOptions): Promise<{ header: GGUFHeader; hparams: Phi2HParams; file: CheckedModelFile }> {
    const { fh } = await openModelFile(path);
    try {
        const st = await fh.stat();
        if (!st.isFile()) throw new GGUFError("not a regular file", path, "ERR_MODEL_NOT_FOUND");
        const header = await readGGUFFromHandle(fh, path, options);
        return { header, hparams: checkPhi2(header), file: { fh, dev: st.dev, ino: st.ino, size: st.size } };
    } catch (err) {
        await fh.close().catch(() => undefined);
        throw err;
    }
}
