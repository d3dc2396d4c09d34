/**
 * A corpus of malformed GGUFs for PhiModel.load: the named cases of issue 4, well-formed files with hostile metadata
 * values (METADATA_CASES), and any number of seeded mutations (byte flips, truncations in every section, length/count/type/dim/offset fields set to hostile values, hparams and
 * token types set to values llama.cpp aborts on) of a small, valid phi2 model with the real Phi-2 vocabulary.
 *
 * Used by test/malformed.test.ts (in-process) and scripts/fuzz.ts (child processes). As a CLI it writes the corpus:
 *
 *   node dist/scripts/malformed-corpus.js --out DIR [--seed N] [--count N]
 *
 * The base model ("micro"): hidden 64, 1 block, 2 heads (head dim 32, rotary 16), FFN 128, context 128, real
 * 51200-token vocabulary; token_embd/output in Q4_0, the rest F32; explicit general.alignment 32. About 5.7 MB,
 * two thirds of it header (the vocabulary), so mutations mostly hit the parser and the validator.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { intFlag, scriptArgs, UsageError } from "./args.js";
import { GGMLType, GGUFValueType, QUANT_TYPES, type GGUFKV } from "../src/gguf/types.js";
import { f32ToF16Bits, kv, writeGGUF, type GGUFTensorSpec, type GGUFWriteSpec } from "../src/gguf/writer.js";
import { phi2HParamsKV } from "../src/testModel/makeTestModel.js";
import { loadPhi2Vocab, phi2VocabKV, PHI2_VOCAB_SIZE, type Phi2Vocab } from "../src/testModel/vocab.js";

// ---------------------------------------------------------------------------------------------------------------
// PRNG

/** mulberry32: small, seedable, good enough for choosing mutations. */
export function prng(seed: number): () => number {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: () => number, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

// ---------------------------------------------------------------------------------------------------------------
// Base models

const E = 64, F = 128, HEADS = 2, ROT = 16, CTX = 128;

function q4_0Bytes(nElem: number, seed: number): Uint8Array {
    const r = prng(seed);
    const blocks = nElem / 32;
    const out = new Uint8Array(blocks * 18);
    const d = f32ToF16Bits(0.02);
    for (let b = 0; b < blocks; b++) {
        out[b * 18] = d & 0xff;
        out[b * 18 + 1] = d >>> 8;
        for (let j = 0; j < 16; j++) out[b * 18 + 2 + j] = Math.floor(r() * 256);
    }
    return out;
}

function uniform(n: number, seed: number, scale: number): Float32Array {
    const r = prng(seed);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
    return out;
}

export interface MicroOptions {
    /** Override / add metadata (by key); `null` removes the key. */
    metadata?: Record<string, GGUFKV | null>;
    /** Replace the vocabulary arrays. */
    vocab?: Phi2Vocab;
    /** Leave out all tensors (a vocab-only file). */
    noTensors?: boolean;
}

/** The phi2 "micro" spec (see the file comment), optionally altered. */
export async function microPhi2Spec(options: MicroOptions = {}): Promise<GGUFWriteSpec> {
    const vocab = options.vocab ?? await loadPhi2Vocab();
    const V = PHI2_VOCAB_SIZE; // the tensors keep 51200 rows even when a test shortens the vocabulary
    const base: GGUFKV[] = [
        kv.str("general.architecture", "phi2"),
        kv.str("general.name", "phi2-micro-fuzz"),
        kv.u32("general.alignment", 32),
        kv.u32("general.file_type", QUANT_TYPES.q4_0),
        ...phi2HParamsKV({ context: CTX, embedding: E, ffn: F, layers: 1, heads: HEADS, rotary: ROT }),
        ...phi2VocabKV(vocab),
    ];
    const metadata: GGUFKV[] = [];
    const over = options.metadata ?? {};
    for (const e of base) {
        if (e.key in over) {
            const o = over[e.key];
            if (o) metadata.push(o);
        } else metadata.push(e);
    }
    for (const [k, e] of Object.entries(over)) if (e && !base.some((b) => b.key === k)) metadata.push(e);

    if (options.noTensors) return { metadata, tensors: [] };
    let s = 100;
    const f32 = (name: string, dims: number[], scale = 0.05): GGUFTensorSpec =>
        ({ name, dims, type: GGMLType.F32, data: uniform(dims.reduce((a, b) => a * b, 1), s++, scale) });
    const ones = (name: string): GGUFTensorSpec => ({ name, dims: [E], type: GGMLType.F32, data: new Float32Array(E).fill(1) });
    const tensors: GGUFTensorSpec[] = [
        { name: "token_embd.weight", dims: [E, V], type: GGMLType.Q4_0, data: q4_0Bytes(E * V, 1) },
        ones("blk.0.attn_norm.weight"),
        f32("blk.0.attn_norm.bias", [E], 0.01),
        f32("blk.0.attn_qkv.weight", [E, 3 * E]),
        f32("blk.0.attn_qkv.bias", [3 * E], 0.01),
        f32("blk.0.attn_output.weight", [E, E]),
        f32("blk.0.attn_output.bias", [E], 0.01),
        f32("blk.0.ffn_up.weight", [E, F]),
        f32("blk.0.ffn_up.bias", [F], 0.01),
        f32("blk.0.ffn_down.weight", [F, E]),
        f32("blk.0.ffn_down.bias", [E], 0.01),
        ones("output_norm.weight"),
        f32("output_norm.bias", [E], 0.01),
        { name: "output.weight", dims: [E, V], type: GGMLType.Q4_0, data: q4_0Bytes(E * V, 2) },
        f32("output.bias", [V], 0.01),
    ];
    return { metadata, tensors };
}

/** A small but valid llama-architecture model (same vocabulary): llama.cpp would load it; we only run phi2. */
export async function microLlamaSpec(): Promise<GGUFWriteSpec> {
    const vocab = await loadPhi2Vocab();
    const V = PHI2_VOCAB_SIZE;
    let s = 500;
    const f32 = (name: string, dims: number[]): GGUFTensorSpec =>
        ({ name, dims, type: GGMLType.F32, data: uniform(dims.reduce((a, b) => a * b, 1), s++, 0.05) });
    return {
        metadata: [
            kv.str("general.architecture", "llama"),
            kv.str("general.name", "llama-micro"),
            kv.u32("general.file_type", QUANT_TYPES.q4_0),
            kv.u32("llama.context_length", CTX),
            kv.u32("llama.embedding_length", E),
            kv.u32("llama.feed_forward_length", F),
            kv.u32("llama.block_count", 1),
            kv.u32("llama.attention.head_count", HEADS),
            kv.u32("llama.attention.head_count_kv", HEADS),
            kv.f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
            kv.u32("llama.rope.dimension_count", E / HEADS),
            ...phi2VocabKV(vocab),
        ],
        tensors: [
            { name: "token_embd.weight", dims: [E, V], type: GGMLType.Q4_0, data: q4_0Bytes(E * V, 3) },
            { name: "blk.0.attn_norm.weight", dims: [E], type: GGMLType.F32, data: new Float32Array(E).fill(1) },
            f32("blk.0.attn_q.weight", [E, E]),
            f32("blk.0.attn_k.weight", [E, E]),
            f32("blk.0.attn_v.weight", [E, E]),
            f32("blk.0.attn_output.weight", [E, E]),
            { name: "blk.0.ffn_norm.weight", dims: [E], type: GGMLType.F32, data: new Float32Array(E).fill(1) },
            f32("blk.0.ffn_gate.weight", [E, F]),
            f32("blk.0.ffn_up.weight", [E, F]),
            f32("blk.0.ffn_down.weight", [F, E]),
            { name: "output_norm.weight", dims: [E], type: GGMLType.F32, data: new Float32Array(E).fill(1) },
            { name: "output.weight", dims: [E, V], type: GGMLType.Q4_0, data: q4_0Bytes(E * V, 4) },
        ],
    };
}

async function specBytes(spec: GGUFWriteSpec, tmpDir: string): Promise<Buffer> {
    const file = path.join(tmpDir, `spec-${process.pid}-${Math.random().toString(36).slice(2)}.gguf`);
    try {
        await writeGGUF(file, spec);
        return fs.readFileSync(file);
    } finally {
        fs.rmSync(file, { force: true });
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Layout of a (valid) GGUF: where every field is, so mutations can aim at them.

export type FieldKind =
    | "n_tensors" | "n_kv" | "key_length" | "value_type" | "string_length" | "array_type" | "array_count"
    | "element_length" | "tensor_name_length" | "n_dims" | "dim" | "tensor_type" | "tensor_offset";

export interface Field {
    kind: FieldKind;
    /** byte offset of the field */
    at: number;
    /** 4 or 8 */
    size: 4 | 8;
    /** what it belongs to, e.g. "metadata 'phi2.block_count'" or "tensor 'output.weight'" */
    owner: string;
}

export interface KVEntry {
    key: string;
    type: number;
    /** offset of the value (for arrays: of the element type) */
    valueAt: number;
    arrayType?: number;
    count?: number;
    /** offsets of the elements (numeric arrays: first element; string arrays: each length field) */
    elementsAt?: number[];
}

export interface GGUFLayout {
    fileSize: number;
    /** end of the 24-byte fixed header */
    fixedEnd: number;
    kvStart: number;
    kvEnd: number;
    tensorInfoStart: number;
    tensorInfoEnd: number;
    dataOffset: number;
    alignment: number;
    fields: Field[];
    kvs: KVEntry[];
    tensors: { name: string; at: number; nDimsAt: number; dimsAt: number[]; typeAt: number; offsetAt: number; offset: number }[];
}

const SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

/** Walks a valid GGUF buffer and records where each field lives. Throws on anything unexpected. */
export function layoutOf(buf: Buffer): GGUFLayout {
    let p = 0;
    const fields: Field[] = [];
    const u32 = () => { const v = buf.readUInt32LE(p); p += 4; return v; };
    const u64 = () => { const v = buf.readBigUInt64LE(p); p += 8; return Number(v); };
    const str = (kind: FieldKind, owner: string) => {
        fields.push({ kind, at: p, size: 8, owner });
        const n = u64();
        const s = buf.toString("utf8", p, p + n);
        p += n;
        return s;
    };
    if (buf.toString("latin1", 0, 4) !== "GGUF") throw new Error("layoutOf: not a GGUF");
    p = 8;
    fields.push({ kind: "n_tensors", at: p, size: 8, owner: "header" });
    const nTensors = u64();
    fields.push({ kind: "n_kv", at: p, size: 8, owner: "header" });
    const nKV = u64();
    const fixedEnd = p;
    const kvs: KVEntry[] = [];
    let alignment = 32;
    for (let i = 0; i < nKV; i++) {
        const key = str("key_length", `metadata key #${i}`);
        const owner = `metadata '${key}'`;
        fields.push({ kind: "value_type", at: p, size: 4, owner });
        const type = u32();
        if (type === GGUFValueType.ARRAY) {
            const valueAt = p;
            fields.push({ kind: "array_type", at: p, size: 4, owner });
            const at = u32();
            fields.push({ kind: "array_count", at: p, size: 8, owner });
            const count = u64();
            const elementsAt: number[] = [];
            if (at === GGUFValueType.STRING) {
                for (let j = 0; j < count; j++) {
                    elementsAt.push(p);
                    if (j < 3 || j % 997 === 0) fields.push({ kind: "element_length", at: p, size: 8, owner: `${owner}[${j}]` });
                    p += 8 + Number(buf.readBigUInt64LE(p));
                }
            } else {
                const sz = SCALAR_SIZE[at];
                if (sz === undefined) throw new Error(`layoutOf: unsupported array type ${at}`);
                elementsAt.push(p);
                p += sz * count;
            }
            kvs.push({ key, type, valueAt, arrayType: at, count, elementsAt });
        } else if (type === GGUFValueType.STRING) {
            const valueAt = p;
            str("string_length", owner);
            kvs.push({ key, type, valueAt });
        } else {
            const sz = SCALAR_SIZE[type];
            if (sz === undefined) throw new Error(`layoutOf: unsupported type ${type}`);
            if (key === "general.alignment") alignment = buf.readUInt32LE(p);
            kvs.push({ key, type, valueAt: p });
            p += sz;
        }
    }
    const kvEnd = p;
    const tensors: GGUFLayout["tensors"] = [];
    for (let i = 0; i < nTensors; i++) {
        const at = p;
        const name = str("tensor_name_length", `tensor #${i}`);
        const owner = `tensor '${name}'`;
        const nDimsAt = p;
        fields.push({ kind: "n_dims", at: p, size: 4, owner });
        const nd = u32();
        const dimsAt: number[] = [];
        for (let d = 0; d < nd; d++) {
            dimsAt.push(p);
            fields.push({ kind: "dim", at: p, size: 8, owner: `${owner} dims[${d}]` });
            u64();
        }
        const typeAt = p;
        fields.push({ kind: "tensor_type", at: p, size: 4, owner });
        u32();
        const offsetAt = p;
        fields.push({ kind: "tensor_offset", at: p, size: 8, owner });
        const offset = u64();
        tensors.push({ name, at, nDimsAt, dimsAt, typeAt, offsetAt, offset });
    }
    const tensorInfoEnd = p;
    const dataOffset = nTensors > 0 ? Math.ceil(p / alignment) * alignment : p;
    return {
        fileSize: buf.length, fixedEnd, kvStart: fixedEnd, kvEnd, tensorInfoStart: kvEnd, tensorInfoEnd, dataOffset, alignment,
        fields, kvs, tensors,
    };
}

function setField(buf: Buffer, f: { at: number; size: 4 | 8 }, value: bigint): void {
    if (f.size === 4) buf.writeUInt32LE(Number(value & 0xffffffffn), f.at);
    else buf.writeBigUInt64LE(value & 0xffffffffffffffffn, f.at);
}

function getField(buf: Buffer, f: { at: number; size: 4 | 8 }): bigint {
    return f.size === 4 ? BigInt(buf.readUInt32LE(f.at)) : buf.readBigUInt64LE(f.at);
}

// ---------------------------------------------------------------------------------------------------------------
// Named cases

export interface NamedCase {
    name: string;
    /** the error code PhiModel.load must reject with */
    code: "ERR_MODEL_NOT_FOUND" | "ERR_INVALID_GGUF" | "ERR_UNSUPPORTED_ARCHITECTURE";
    /** the message must match (it names the problem) */
    message: RegExp;
    /** writes the case under `dir` and returns the path to load */
    make: (dir: string) => Promise<string>;
}

export interface Corpus {
    /** the valid base model's bytes (micro phi2) */
    base: Buffer;
    layout: GGUFLayout;
    named: NamedCase[];
}

function kvAt(l: GGUFLayout, key: string): KVEntry {
    const e = l.kvs.find((k) => k.key === key);
    if (!e) throw new Error(`base model has no '${key}'`);
    return e;
}

/** Builds the base model and the named cases (they write their files lazily). */
export async function buildCorpus(tmpDir = os.tmpdir()): Promise<Corpus> {
    const base = await specBytes(await microPhi2Spec(), tmpDir);
    const layout = layoutOf(base);
    const vocab = await loadPhi2Vocab();
    const edit = (name: string, fn: (b: Buffer) => Buffer | void) => async (dir: string) => {
        const b = Buffer.from(base);
        const out = fn(b) ?? b;
        const file = path.join(dir, `${name}.gguf`);
        fs.writeFileSync(file, out);
        return file;
    };
    const fromSpec = (name: string, spec: () => Promise<GGUFWriteSpec>) => async (dir: string) => {
        const file = path.join(dir, `${name}.gguf`);
        await writeGGUF(file, await spec());
        return file;
    };
    const tinfo = (name: string) => layout.tensors.find((t) => t.name === name)!;
    const firstKey = layout.fields.find((f) => f.kind === "key_length")!;
    const tokensKV = kvAt(layout, "tokenizer.ggml.tokens");
    const PNG = Buffer.from("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000201a5f9d5a70000000049454e44ae426082", "hex");

    const named: NamedCase[] = [
        { name: "missing-path", code: "ERR_MODEL_NOT_FOUND", message: /not found/i, make: async (dir) => path.join(dir, "no-such-model.gguf") },
        { name: "directory", code: "ERR_MODEL_NOT_FOUND", message: /is a directory/, make: async (dir) => { const d = path.join(dir, "a-directory.gguf"); fs.mkdirSync(d, { recursive: true }); return d; } },
        { name: "zero-bytes", code: "ERR_INVALID_GGUF", message: /empty/, make: async (dir) => { const f = path.join(dir, "empty.gguf"); fs.writeFileSync(f, ""); return f; } },
        { name: "png-bytes", code: "ERR_INVALID_GGUF", message: /not a GGUF file.*magic/, make: async (dir) => { const f = path.join(dir, "image.gguf"); fs.writeFileSync(f, PNG); return f; } },
        { name: "bad-magic", code: "ERR_INVALID_GGUF", message: /magic "GGUX"/, make: edit("bad-magic", (b) => { b.write("GGUX", 0, "latin1"); }) },
        ...[0, 1, 999].map((v): NamedCase => ({
            name: `version-${v}`, code: "ERR_INVALID_GGUF", message: new RegExp(`version is ${v}\\b`),
            make: edit(`version-${v}`, (b) => { b.writeUInt32LE(v, 4); }),
        })),
        { name: "n_tensors-2^62", code: "ERR_INVALID_GGUF", message: /n_tensors is 4611686018427387904/, make: edit("n_tensors-huge", (b) => { b.writeBigUInt64LE(1n << 62n, 8); }) },
        { name: "n_kv-2^62", code: "ERR_INVALID_GGUF", message: /n_kv is 4611686018427387904/, make: edit("n_kv-huge", (b) => { b.writeBigUInt64LE(1n << 62n, 16); }) },
        { name: "string-length-2^40", code: "ERR_INVALID_GGUF", message: /metadata key #0.*string length 1099511627776/, make: edit("string-length-huge", (b) => { setField(b, firstKey, 1n << 40n); }) },
        { name: "tensor-dims-5", code: "ERR_INVALID_GGUF", message: /n_dims is 5/, make: edit("n-dims-5", (b) => { b.writeUInt32LE(5, layout.tensors[0]!.nDimsAt); }) },
        { name: "tensor-dim-negative", code: "ERR_INVALID_GGUF", message: /token_embd\.weight.*dims\[1\] is 18446744073709551615/, make: edit("dim-negative", (b) => { b.writeBigInt64LE(-1n, tinfo("token_embd.weight").dimsAt[1]!); }) },
        {
            name: "tensor-dims-overflow", code: "ERR_INVALID_GGUF", message: /token_embd\.weight.*overflows/,
            make: edit("dims-overflow", (b) => { const t = tinfo("token_embd.weight"); b.writeBigUInt64LE(1n << 40n, t.dimsAt[0]!); b.writeBigUInt64LE(1n << 40n, t.dimsAt[1]!); }),
        },
        { name: "tensor-type-999", code: "ERR_INVALID_GGUF", message: /type id 999 is not a ggml type/, make: edit("type-999", (b) => { b.writeUInt32LE(999, tinfo("output.weight").typeAt); }) },
        {
            name: "tensor-offset-past-eof", code: "ERR_INVALID_GGUF", message: /output\.bias.*past the end of the file/,
            make: edit("offset-past-eof", (b) => { b.writeBigUInt64LE(BigInt(Math.ceil(b.length / 32) * 32 + 4096), tinfo("output.bias").offsetAt); }),
        },
        { name: "alignment-0", code: "ERR_INVALID_GGUF", message: /general\.alignment' is 0/, make: edit("alignment-0", (b) => { b.writeUInt32LE(0, kvAt(layout, "general.alignment").valueAt); }) },
        { name: "alignment-3", code: "ERR_INVALID_GGUF", message: /general\.alignment' is 3/, make: edit("alignment-3", (b) => { b.writeUInt32LE(3, kvAt(layout, "general.alignment").valueAt); }) },
        { name: "truncated-in-header", code: "ERR_INVALID_GGUF", message: /truncated.*n_tensors|n_tensors.*truncated/, make: edit("trunc-header", (b) => b.subarray(0, 13)) },
        {
            name: "truncated-in-kv", code: "ERR_INVALID_GGUF", message: /truncated|tokenizer\.ggml\.tokens/,
            make: edit("trunc-kv", (b) => b.subarray(0, tokensKV.elementsAt![Math.floor(tokensKV.count! / 2)]! + 3)),
        },
        {
            name: "truncated-in-tensor-info", code: "ERR_INVALID_GGUF", message: /truncated|more than the whole file/,
            make: edit("trunc-tinfo", (b) => b.subarray(0, layout.tensors[3]!.typeAt + 2)),
        },
        {
            name: "truncated-in-data", code: "ERR_INVALID_GGUF", message: /past the end of the file|truncated/,
            make: edit("trunc-data", (b) => b.subarray(0, layout.dataOffset + Math.floor((layout.fileSize - layout.dataOffset) / 2))),
        },
        { name: "llama-architecture", code: "ERR_UNSUPPORTED_ARCHITECTURE", message: /architecture is "llama".*phi2/, make: fromSpec("llama", microLlamaSpec) },
        { name: "vocab-only", code: "ERR_INVALID_GGUF", message: /no tensors.*vocab-only/, make: fromSpec("vocab-only", () => microPhi2Spec({ noTensors: true })) },
        { name: "block_count-0", code: "ERR_INVALID_GGUF", message: /block_count' is 0\b/, make: fromSpec("block-count-0", () => microPhi2Spec({ metadata: { "phi2.block_count": kv.u32("phi2.block_count", 0) } })) },
        { name: "block_count-100000", code: "ERR_INVALID_GGUF", message: /block_count' is 100000\b/, make: fromSpec("block-count-100000", () => microPhi2Spec({ metadata: { "phi2.block_count": kv.u32("phi2.block_count", 100000) } })) },
        {
            name: "duplicate-vocab-strings", code: "ERR_INVALID_GGUF", message: /duplicate token "the"/,
            make: fromSpec("duplicate-vocab", () => {
                const tokens = vocab.tokens.slice();
                tokens[1000] = "the"; // id 1169 is "the" too
                return microPhi2Spec({ vocab: { ...vocab, tokens } });
            }),
        },
        {
            name: "vocab-count-neq-embedding-rows", code: "ERR_INVALID_GGUF", message: /vocab count ≠ embedding rows.*51199.*51200/,
            make: fromSpec("vocab-count-mismatch", () => microPhi2Spec({
                vocab: { ...vocab, tokens: vocab.tokens.slice(0, -1), tokenTypes: vocab.tokenTypes.slice(0, -1) },
            })),
        },
    ];
    return { base, layout, named };
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile metadata: well-formed files whose keys carry values llama.cpp may choke on (each must load or be refused)

export interface MetadataCase {
    name: string;
    /** key → replacement KV (null removes the key) */
    metadata: Record<string, GGUFKV | null>;
}

const u32 = (k: string, v: number) => ({ [k]: kv.u32(k, v) });
const f32v = (k: string, v: number) => ({ [k]: kv.f32(k, v) });
const strv = (k: string, v: string) => ({ [k]: kv.str(k, v) });

export const METADATA_CASES: readonly MetadataCase[] = [
    ...[0, 33, 64, 15].map((v) => ({ name: `rope.dimension_count ${v}`, metadata: u32("phi2.rope.dimension_count", v) })),
    ...[0, -1, NaN, Infinity, 1e-30].map((v) => ({ name: `rope.freq_base ${v}`, metadata: f32v("phi2.rope.freq_base", v) })),
    { name: "rope.scaling.type yarn, factor 0", metadata: { ...strv("phi2.rope.scaling.type", "yarn"), ...f32v("phi2.rope.scaling.factor", 0) } },
    { name: "rope.scaling.type linear, factor NaN", metadata: { ...strv("phi2.rope.scaling.type", "linear"), ...f32v("phi2.rope.scaling.factor", NaN) } },
    { name: "rope.scaling.type bogus", metadata: strv("phi2.rope.scaling.type", "bogus") },
    { name: "expert_count 8", metadata: { ...u32("phi2.expert_count", 8), ...u32("phi2.expert_used_count", 2) } },
    ...[0, 1, 0x7fffffff].map((v) => ({ name: `attention.sliding_window ${v}`, metadata: u32("phi2.attention.sliding_window", v) })),
    { name: "attention.key_length 16", metadata: u32("phi2.attention.key_length", 16) },
    { name: "attention.value_length 64", metadata: u32("phi2.attention.value_length", 64) },
    ...[0, 3, 64, 128].map((v) => ({ name: `attention.head_count ${v}`, metadata: u32("phi2.attention.head_count", v) })),
    ...[0, 1, 3].map((v) => ({ name: `attention.head_count_kv ${v}`, metadata: u32("phi2.attention.head_count_kv", v) })),
    { name: "embedding_length 128 (tensors are 64)", metadata: u32("phi2.embedding_length", 128) },
    { name: "feed_forward_length 256 (tensors are 128)", metadata: u32("phi2.feed_forward_length", 256) },
    { name: "block_count 2 (1 block of tensors)", metadata: u32("phi2.block_count", 2) },
    ...[0, 1, 0xffffffff].map((v) => ({ name: `context_length ${v}`, metadata: u32("phi2.context_length", v) })),
    { name: "context_length as float32", metadata: { "phi2.context_length": kv.f32("phi2.context_length", 128) } },
    { name: "layer_norm_epsilon as float64", metadata: { "phi2.attention.layer_norm_epsilon": kv.f64("phi2.attention.layer_norm_epsilon", 1e-5) } },
    ...[0, NaN, -1e-5].map((v) => ({ name: `layer_norm_epsilon ${v}`, metadata: f32v("phi2.attention.layer_norm_epsilon", v) })),
    { name: "layer_norm_epsilon missing", metadata: { "phi2.attention.layer_norm_epsilon": null } },
    { name: "tokenizer.ggml.pre unknown", metadata: strv("tokenizer.ggml.pre", "no-such-pre-tokenizer") },
    { name: "tokenizer.ggml.pre llama3", metadata: strv("tokenizer.ggml.pre", "llama3") },
    { name: "tokenizer.ggml.pre missing", metadata: { "tokenizer.ggml.pre": null } },
    { name: "tokenizer.ggml.model llama", metadata: strv("tokenizer.ggml.model", "llama") },
    { name: "tokenizer.ggml.merges empty", metadata: { "tokenizer.ggml.merges": kv.strArr("tokenizer.ggml.merges", []) } },
    { name: "tokenizer.ggml.merges without spaces", metadata: { "tokenizer.ggml.merges": kv.strArr("tokenizer.ggml.merges", ["ab", "cd"]) } },
    { name: "tokenizer.ggml.scores too short", metadata: { "tokenizer.ggml.scores": kv.f32Arr("tokenizer.ggml.scores", [1, 2, 3]) } },
    { name: "tokenizer.ggml.token_type too short", metadata: { "tokenizer.ggml.token_type": kv.i32Arr("tokenizer.ggml.token_type", [1, 1]) } },
    { name: "tokenizer.ggml.token_type missing", metadata: { "tokenizer.ggml.token_type": null } },
    { name: "add_bos_token as uint32", metadata: { "tokenizer.ggml.add_bos_token": kv.u32("tokenizer.ggml.add_bos_token", 1) } },
    { name: "add_bos_token true", metadata: { "tokenizer.ggml.add_bos_token": kv.bool("tokenizer.ggml.add_bos_token", true) } },
    { name: "eos_token_id missing", metadata: { "tokenizer.ggml.eos_token_id": null, "tokenizer.ggml.bos_token_id": null, "tokenizer.ggml.unknown_token_id": null } },
    ...[51199, 51200, 0xffffffff].map((v) => ({ name: `eot_token_id ${v}`, metadata: u32("tokenizer.ggml.eot_token_id", v) })),
    { name: "padding_token_id 51200", metadata: u32("tokenizer.ggml.padding_token_id", 51200) },
    { name: "general.file_type 9999", metadata: u32("general.file_type", 9999) },
    { name: "general.architecture missing", metadata: { "general.architecture": null } },
    { name: "general.architecture as uint32", metadata: { "general.architecture": kv.u32("general.architecture", 2) } },
];

/** Writes a METADATA_CASES entry (the micro model with those keys changed) and returns its path. */
export async function makeMetadataCase(dir: string, c: MetadataCase, index: number): Promise<string> {
    const file = path.join(dir, `metadata-${index}.gguf`);
    await writeGGUF(file, await microPhi2Spec({ metadata: c.metadata }));
    return file;
}

// ---------------------------------------------------------------------------------------------------------------
// Seeded mutations

export interface Mutation {
    /** e.g. "m0042 field:array_count metadata 'tokenizer.ggml.merges' = 2^62" */
    name: string;
    bytes: Buffer;
}

const HUGE: readonly bigint[] = [1n << 62n, 1n << 40n, (1n << 64n) - 1n, 1n << 63n, 1n << 32n, (1n << 32n) - 1n, 0n, 1n << 31n];
const U32_SPECIAL: readonly number[] = [0, 1, 2, 3, 5, 7, 16, 31, 33, 63, 64, 65, 100000, 0x7fffffff, 0x80000000, 0xffffffff];
const F32_SPECIAL: readonly number[] = [NaN, Infinity, -Infinity, 0, -1, 1e30, 1e-30, 2];
const TOKEN_TYPES: readonly number[] = [0, 1, 2, 3, 4, 5, 6, 7, 255, -1, 0x7fffffff];

function fmt(v: bigint): string {
    for (const [e, s] of [[62n, "2^62"], [40n, "2^40"], [63n, "2^63"], [32n, "2^32"], [31n, "2^31"]] as const) if (v === 1n << e) return s;
    if (v === (1n << 64n) - 1n) return "2^64-1";
    if (v === (1n << 32n) - 1n) return "2^32-1";
    return v.toString();
}

/** Tokens a short generation from the fuzz prompt touches first: their token types are worth mutating. */
const HOT_TOKENS = [0, 1, 11, 13, 198, 220, 257, 262, 290, 464, 1169, 15496, 50256, 50257, 50294, 50295, 51199];

/**
 * Mutation `index` of `seed`: deterministic. Kinds rotate so every kind gets its share:
 * flip-header, flip-any, truncate (fixed header / KV / tensor infos / data, in turn), huge length/count field,
 * hparam value, value/array/tensor type ids, tensor dims and offsets, token types, special token ids, and
 * combinations of two or three of these.
 */
export function mutate(base: Buffer, layout: GGUFLayout, seed: number, index: number): Mutation {
    const r = prng((seed * 0x9e3779b1 + index * 0x85ebca6b) >>> 0);
    const kinds = ["flip-header", "flip-any", "truncate", "length", "hparam", "type", "tensor", "token-type", "special-id", "combo"] as const;
    const kind = kinds[index % kinds.length]!;
    const id = `m${String(index).padStart(4, "0")}`;
    if (kind === "truncate") {
        const sections: [string, number, number][] = [
            ["fixed header", 0, layout.fixedEnd],
            ["metadata", layout.kvStart, layout.kvEnd],
            ["tensor infos", layout.tensorInfoStart, layout.tensorInfoEnd],
            ["data", layout.dataOffset, layout.fileSize],
        ];
        const [label, lo, hi] = sections[Math.floor(index / kinds.length) % sections.length]!;
        const cut = int(r, lo, hi - 1);
        return { name: `${id} truncate in ${label} at ${cut}`, bytes: Buffer.from(base.subarray(0, cut)) };
    }
    const b = Buffer.from(base);
    const notes: string[] = [];
    const steps = kind === "combo" ? int(r, 2, 3) : 1;
    for (let s = 0; s < steps; s++) {
        const k = kind === "combo" ? pick(r, kinds.filter((x) => x !== "combo" && x !== "truncate")) : kind;
        notes.push(applyOne(b, layout, r, k));
    }
    return { name: `${id} ${kind}: ${notes.join("; ")}`, bytes: b };
}

function applyOne(b: Buffer, layout: GGUFLayout, r: () => number, kind: string): string {
    switch (kind) {
        case "flip-header":
        case "flip-any": {
            const hi = kind === "flip-header" ? layout.dataOffset : layout.fileSize;
            const n = int(r, 1, kind === "flip-header" ? 4 : 16);
            const at: number[] = [];
            for (let i = 0; i < n; i++) {
                const p = int(r, 0, hi - 1);
                b[p] = b[p]! ^ int(r, 1, 255);
                at.push(p);
            }
            return `flip bytes at ${at.join(",")}`;
        }
        case "length": {
            const lengthKinds: FieldKind[] = ["n_tensors", "n_kv", "key_length", "string_length", "array_count", "element_length", "tensor_name_length"];
            const f = pick(r, layout.fields.filter((x) => lengthKinds.includes(x.kind)));
            const old = getField(b, f);
            const v = r() < 0.8 ? pick(r, HUGE) : old + BigInt(int(r, -2, 2));
            setField(b, f, v < 0n ? 0n : v);
            return `${f.kind} of ${f.owner} = ${fmt(v)}`;
        }
        case "hparam": {
            const scalars = layout.kvs.filter((e) => e.type === GGUFValueType.UINT32 || e.type === GGUFValueType.FLOAT32);
            const e = pick(r, scalars);
            if (e.type === GGUFValueType.FLOAT32) {
                const v = pick(r, F32_SPECIAL);
                b.writeFloatLE(v, e.valueAt);
                return `${e.key} = ${v}`;
            }
            const v = pick(r, U32_SPECIAL);
            b.writeUInt32LE(v, e.valueAt);
            return `${e.key} = ${v}`;
        }
        case "type": {
            const f = pick(r, layout.fields.filter((x) => x.kind === "value_type" || x.kind === "array_type" || x.kind === "tensor_type" || x.kind === "n_dims"));
            const v = f.kind === "n_dims" ? int(r, 0, 6) : r() < 0.3 ? pick(r, [13, 999, 0xffffffff]) : int(r, 0, f.kind === "tensor_type" ? 45 : 12);
            setField(b, f, BigInt(v));
            return `${f.kind} of ${f.owner} = ${v}`;
        }
        case "tensor": {
            const t = pick(r, layout.tensors);
            if (r() < 0.5) {
                const d = int(r, 0, t.dimsAt.length - 1);
                const old = b.readBigUInt64LE(t.dimsAt[d]!);
                const v = pick(r, [0n, 1n, old * 2n, old / 2n, old + 1n, 1n << 63n, 1n << 33n, (1n << 64n) - 1n]);
                b.writeBigUInt64LE(v & 0xffffffffffffffffn, t.dimsAt[d]!);
                return `tensor '${t.name}' dims[${d}] = ${fmt(v)}`;
            }
            const v = pick(r, [0n, BigInt(t.offset + layout.alignment), BigInt(t.offset + 1), BigInt(layout.fileSize), (1n << 64n) - 32n, BigInt(t.offset) - 32n]);
            b.writeBigUInt64LE(v < 0n ? 0n : v, t.offsetAt);
            return `tensor '${t.name}' offset = ${fmt(v)}`;
        }
        case "token-type": {
            const e = kvAt(layout, "tokenizer.ggml.token_type");
            const tok = r() < 0.7 ? pick(r, HOT_TOKENS) : int(r, 0, e.count! - 1);
            const v = pick(r, TOKEN_TYPES);
            b.writeInt32LE(v, e.elementsAt![0]! + tok * 4);
            return `token_type[${tok}] = ${v}`;
        }
        case "special-id": {
            const keys = ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"];
            const e = kvAt(layout, pick(r, keys));
            const v = pick(r, [0, 50256, 51199, 51200, 60000, 0xffffffff, 0x7fffffff]);
            b.writeUInt32LE(v, e.valueAt);
            return `${e.key} = ${v}`;
        }
        default:
            throw new Error(`unknown mutation kind ${kind}`);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CLI

const USAGE = "usage: node dist/scripts/malformed-corpus.js --out DIR [--seed N] [--count N]";

async function main(): Promise<void> {
    const { out, seed, count } = scriptArgs("malformed-corpus", USAGE, { out: { type: "string" }, seed: { type: "string" }, count: { type: "string" } }, (v) => {
        if (!v.out) throw new UsageError("--out DIR is required");
        return { out: path.resolve(v.out), seed: intFlag("seed", v.seed, 0) ?? 1, count: intFlag("count", v.count, 0) ?? 1000 };
    });
    fs.mkdirSync(out, { recursive: true });
    const corpus = await buildCorpus(out);
    const manifest: { file: string; name: string; expect?: string }[] = [];
    for (const c of corpus.named) manifest.push({ file: await c.make(out), name: c.name, expect: c.code });
    for (let k = 0; k < METADATA_CASES.length; k++) manifest.push({ file: await makeMetadataCase(out, METADATA_CASES[k]!, k), name: `metadata: ${METADATA_CASES[k]!.name}` });
    for (let k = 0; k < count; k++) {
        const m = mutate(corpus.base, corpus.layout, seed, k);
        const file = path.join(out, `mutation-${seed}-${String(k).padStart(4, "0")}.gguf`);
        fs.writeFileSync(file, m.bytes);
        manifest.push({ file, name: m.name });
    }
    fs.writeFileSync(path.join(out, "manifest.json"), JSON.stringify(manifest, null, 1));
    console.log(`wrote ${corpus.named.length} named cases, ${METADATA_CASES.length} hostile-metadata files and ${count} mutations (seed ${seed}) to ${out}`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
    main().catch((err) => {
        console.error(err);
        process.exit(1);
    });
}
