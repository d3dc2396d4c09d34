/**
 * Writes phi2-architecture GGUFs with seeded random weights and the real Phi-2 vocabulary, for tests,
 * benchmarks and demos without downloading a model.
 *
 * - shape "tiny": hidden 256, 2 blocks, 4 heads (head dim 64), rotary 32, FFN 1024, vocab 51200
 *   (every matrix row is a multiple of 256, so k-quants work); ~28M weights.
 * - shape "phi2": the real Phi-2 geometry (2560 hidden, 32 blocks, 32 heads, FFN 10240, rotary 32, ctx 2048,
 *   vocab 51200); 2.78B weights, streamed to disk chunk by chunk.
 *
 * f32/f16/q8_0 are written directly; q4_k_m writes an f16 temp file and quantizes it with llama.cpp's own
 * quantizer (src/model/quantize.ts). Files are written under a temp name and renamed when complete, so a
 * killed run never leaves a half-written model under the final name.
 */
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { randomBytes } from "node:crypto";
import { OutputPathError } from "../errors.js";
import { GGMLType, QUANT_TYPES, type GGUFKV } from "../gguf/types.js";
import { kv, writeGGUF, type EmitValues, type GGUFTensorSpec } from "../gguf/writer.js";
import { readGGUF } from "../gguf/reader.js";
import { checkPhi2 } from "../gguf/validate.js";
import { checkOutputPath } from "../model/outputPath.js";
import { loadPhi2Vocab, packageRoot, phi2VocabKV, PHI2_VOCAB_SIZE } from "./vocab.js";

export type TestModelShape = "tiny" | "phi2";
export type TestModelType = "f32" | "f16" | "q8_0" | "q4_k_m";

export const TEST_MODEL_SHAPES: readonly TestModelShape[] = ["tiny", "phi2"];
export const TEST_MODEL_TYPES: readonly TestModelType[] = ["f32", "f16", "q8_0", "q4_k_m"];

export interface TestModelGeometry {
    embedding: number;
    layers: number;
    heads: number;
    ffn: number;
    rotary: number;
    context: number;
    vocab: number;
}

export const TEST_MODEL_GEOMETRY: Readonly<Record<TestModelShape, TestModelGeometry>> = {
    tiny: { embedding: 256, layers: 2, heads: 4, ffn: 1024, rotary: 32, context: 2048, vocab: PHI2_VOCAB_SIZE },
    phi2: { embedding: 2560, layers: 32, heads: 32, ffn: 10240, rotary: 32, context: 2048, vocab: PHI2_VOCAB_SIZE },
};

/** The phi2.* hyper-parameter keys llama.cpp reads, for a model of geometry `g` (LayerNorm eps 1e-5, MHA). */
export function phi2HParamsKV(g: Omit<TestModelGeometry, "vocab">): GGUFKV[] {
    return [
        kv.u32("phi2.context_length", g.context),
        kv.u32("phi2.embedding_length", g.embedding),
        kv.u32("phi2.feed_forward_length", g.ffn),
        kv.u32("phi2.block_count", g.layers),
        kv.u32("phi2.attention.head_count", g.heads),
        kv.u32("phi2.attention.head_count_kv", g.heads),
        kv.f32("phi2.attention.layer_norm_epsilon", 1e-5),
        kv.u32("phi2.rope.dimension_count", g.rotary),
    ];
}

export type MakeTestModelProgress = (fraction: number, label: string) => void;

export interface MakeTestModelOptions {
    /** output .gguf path */
    out: string;
    shape: TestModelShape;
    /** PRNG seed (uint32), default 1 */
    seed?: number;
    type: TestModelType;
    onProgress?: MakeTestModelProgress;
    /** Replace `out` when it exists (default false: OutputPathError ERR_OUTPUT_EXISTS, before any work). */
    overwrite?: boolean;
}

export interface MakeTestModelResult {
    path: string;
    shape: TestModelShape;
    type: TestModelType;
    seed: number;
    bytes: number;
}

const GGML_TYPE: Record<Exclude<TestModelType, "q4_k_m">, number> = { f32: GGMLType.F32, f16: GGMLType.F16, q8_0: GGMLType.Q8_0 };

// ---------------------------------------------------------------------------------------------------------------
// PRNG: xoshiro128** seeded through splitmix32, one independent stream per tensor.

class Xoshiro128 {
    private a: number;
    private b: number;
    private c: number;
    private d: number;

    constructor(seed: number, stream: number) {
        let s = (seed ^ Math.imul(stream + 1, 0x9e3779b9)) >>> 0;
        const next = () => {
            s = (s + 0x9e3779b9) | 0;
            let z = s;
            z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
            z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
            return (z ^ (z >>> 16)) >>> 0;
        };
        this.a = next(); this.b = next(); this.c = next(); this.d = next();
        if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
    }

    /** Fills `out` with uniform values in [-scale, scale); each 32-bit draw gives two 16-bit values. */
    fillUniform(out: Float32Array, scale: number): void {
        let a = this.a, b = this.b, c = this.c, d = this.d;
        const k = (2 * scale) / 65536;
        const off = -scale + k / 2;
        const n = out.length;
        let i = 0;
        for (; i + 1 < n; i += 2) {
            const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
            const t = b << 9;
            c ^= a; d ^= b; b ^= c; a ^= d; c ^= t; d = rotl(d, 11);
            out[i] = (r & 0xffff) * k + off;
            out[i + 1] = (r >>> 16) * k + off;
        }
        if (i < n) {
            const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
            const t = b << 9;
            c ^= a; d ^= b; b ^= c; a ^= d; c ^= t; d = rotl(d, 11);
            out[i] = (r & 0xffff) * k + off;
        }
        this.a = a; this.b = b; this.c = c; this.d = d;
    }
}

function rotl(x: number, k: number): number {
    return (x << k) | (x >>> (32 - k));
}

const CHUNK = 1 << 20;

function uniform(seed: number, stream: number, n: number, scale: number): (emit: EmitValues) => Promise<void> {
    return async (emit) => {
        const rng = new Xoshiro128(seed, stream);
        const buf = new Float32Array(Math.min(CHUNK, n));
        for (let done = 0; done < n; done += buf.length) {
            const m = Math.min(buf.length, n - done);
            const view = m === buf.length ? buf : buf.subarray(0, m);
            rng.fillUniform(view, scale);
            await emit(view);
        }
    };
}

function constant(n: number, value: number): Float32Array {
    return new Float32Array(n).fill(value);
}

// ---------------------------------------------------------------------------------------------------------------

function checkOptions(o: MakeTestModelOptions): void {
    if (!o || typeof o !== "object") throw new TypeError("makeTestModel: options object required");
    if (typeof o.out !== "string" || o.out.length === 0) throw new TypeError("makeTestModel: `out` must be a non-empty path");
    if (!TEST_MODEL_SHAPES.includes(o.shape)) {
        throw new RangeError(`makeTestModel: shape ${JSON.stringify(o.shape)} is not one of ${TEST_MODEL_SHAPES.join(", ")}`);
    }
    if (!TEST_MODEL_TYPES.includes(o.type)) {
        throw new RangeError(`makeTestModel: type ${JSON.stringify(o.type)} is not one of ${TEST_MODEL_TYPES.join(", ")}`);
    }
    if (o.seed !== undefined && (!Number.isInteger(o.seed) || o.seed < 0 || o.seed > 0xffffffff)) {
        throw new RangeError(`makeTestModel: seed ${String(o.seed)} must be an integer in 0..4294967295`);
    }
    if (o.overwrite !== undefined && typeof o.overwrite !== "boolean") {
        throw new TypeError(`makeTestModel: overwrite must be a boolean, got ${JSON.stringify(o.overwrite)}`);
    }
}

function tempName(finalPath: string, tag: string): string {
    return join(dirname(finalPath), `.${basename(finalPath)}.${tag}-${process.pid}-${randomBytes(4).toString("hex")}.gguf`);
}

/** Metadata + streamed tensors of a phi2 test model, weights in `wtype` (F32/F16/Q8_0). */
async function buildSpec(shape: TestModelShape, seed: number, type: Exclude<TestModelType, "q4_k_m">):
    Promise<{ metadata: GGUFKV[]; tensors: GGUFTensorSpec[] }> {
    const g = TEST_MODEL_GEOMETRY[shape];
    const vocab = await loadPhi2Vocab();
    const E = g.embedding, F = g.ffn, V = g.vocab;
    const metadata: GGUFKV[] = [
        kv.str("general.architecture", "phi2"),
        kv.str("general.name", `phi2-test-${shape}`),
        kv.u32("general.file_type", QUANT_TYPES[type]),
        kv.u32("general.quantization_version", 2),
        ...phi2HParamsKV(g),
        ...phi2VocabKV(vocab),
    ];
    const wt = GGML_TYPE[type];
    const tensors: GGUFTensorSpec[] = [];
    let stream = 0;
    const weight = (name: string, dims: number[], scale = 0.05) =>
        tensors.push({ name, dims, type: wt, data: uniform(seed, stream++, dims[0]! * dims[1]!, scale) });
    const bias = (name: string, n: number, scale = 0.01) =>
        tensors.push({ name, dims: [n], type: GGMLType.F32, data: uniform(seed, stream++, n, scale) });
    const norm = (prefix: string) => {
        tensors.push({ name: `${prefix}.weight`, dims: [E], type: GGMLType.F32, data: constant(E, 1) });
        tensors.push({ name: `${prefix}.bias`, dims: [E], type: GGMLType.F32, data: constant(E, 0) });
    };

    weight("token_embd.weight", [E, V]);
    for (let i = 0; i < g.layers; i++) {
        const b = `blk.${i}.`;
        norm(`${b}attn_norm`);
        weight(`${b}attn_qkv.weight`, [E, 3 * E]);
        bias(`${b}attn_qkv.bias`, 3 * E);
        weight(`${b}attn_output.weight`, [E, E]);
        bias(`${b}attn_output.bias`, E);
        weight(`${b}ffn_up.weight`, [E, F]);
        bias(`${b}ffn_up.bias`, F);
        weight(`${b}ffn_down.weight`, [F, E]);
        bias(`${b}ffn_down.bias`, E);
    }
    norm("output_norm");
    weight("output.weight", [E, V]);
    bias("output.bias", V);
    return { metadata, tensors };
}

/** llama.cpp's quantizer (src/model/quantize.ts), imported lazily: only q4_k_m needs the native addon. */
async function quantizeToQ4KM(input: string, output: string): Promise<void> {
    const { quantizeModel } = await import("../model/quantize.js");
    await quantizeModel(input, output, { type: "q4_k_m" });
}

/**
 * Writes a phi2 test model to `out` (atomically: temp file + rename), creating its folder. An existing `out` is
 * replaced only with `overwrite: true`; a folder is never written over; both are checked before any work.
 */
export async function makeTestModel(options: MakeTestModelOptions): Promise<MakeTestModelResult> {
    checkOptions(options);
    const { shape, type, onProgress } = options;
    const seed = options.seed ?? 1;
    const out = resolve(options.out);
    await mkdir(dirname(out), { recursive: true }).catch((err: NodeJS.ErrnoException) => {
        throw new OutputPathError("ERR_INVALID_OUTPUT", `Cannot create the folder of ${options.out}: ${err.message}`, out);
    });
    checkOutputPath(out, { overwrite: options.overwrite === true });

    const tmpOut = tempName(out, "tmp");
    const tmpF16 = type === "q4_k_m" ? tempName(out, "f16") : undefined;
    try {
        if (type === "q4_k_m") {
            const spec = await buildSpec(shape, seed, "f16");
            await writeGGUF(tmpF16!, spec, onProgress && ((f, l) => onProgress(f * 0.5, `f16 ${l}`)));
            onProgress?.(0.5, "quantizing to q4_k_m");
            await quantizeToQ4KM(tmpF16!, tmpOut);
        } else {
            const spec = await buildSpec(shape, seed, type);
            await writeGGUF(tmpOut, spec, onProgress);
        }
        await rename(tmpOut, out);
    } catch (err) {
        await rm(tmpOut, { force: true }).catch(() => undefined);
        throw err;
    } finally {
        if (tmpF16) await rm(tmpF16, { force: true }).catch(() => undefined);
    }
    const bytes = (await stat(out)).size;
    onProgress?.(1, "done");
    return { path: out, shape, type, seed, bytes };
}

export interface EnsureTestModelOptions {
    shape?: TestModelShape;
    type?: TestModelType;
    seed?: number;
    /** folder for the models, default <package root>/models */
    dir?: string;
    onProgress?: MakeTestModelProgress;
}

/** The path ensureTestModel uses: <repo>/models/test-<shape>-<type>-s<seed>.gguf */
export function testModelPath(shape: TestModelShape, type: TestModelType, seed: number, dir?: string): string {
    return join(dir ?? join(packageRoot(), "models"), `test-${shape}-${type}-s${seed}.gguf`);
}

const inFlight = new Map<string, Promise<string>>();

/** Returns the path of the test model, writing it first if it is missing (or unreadable). */
export function ensureTestModel(options: EnsureTestModelOptions = {}): Promise<string> {
    const shape = options.shape ?? "tiny";
    const type = options.type ?? "f32";
    const seed = options.seed ?? 1;
    const path = testModelPath(shape, type, seed, options.dir);
    let p = inFlight.get(path);
    if (!p) {
        p = (async () => {
            if (await isUsable(path)) return path;
            await makeTestModel({ out: path, shape, type, seed, overwrite: true, ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
            return path;
        })().finally(() => inFlight.delete(path));
        inFlight.set(path, p);
    }
    return p;
}

async function isUsable(path: string): Promise<boolean> {
    try {
        checkPhi2(await readGGUF(path));
        return true;
    } catch {
        return false;
    }
}
