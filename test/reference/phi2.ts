/**
 * A reference Phi-2 forward pass in plain TypeScript, for tests: written from the architecture (and checked against
 * llama.cpp's graph, deps/llama.cpp/src/models/phi2.cpp), not from our native code.
 *
 * Per block (pre-norm, attention and MLP in parallel):
 *   h    = LayerNorm(x; attn_norm.weight, attn_norm.bias, eps)          eps = phi2.attention.layer_norm_epsilon
 *   qkv  = attn_qkv.weight · h + attn_qkv.bias                          fused: [Q (E) | K (E_kv) | V (E_kv)]
 *   q,k  = NeoX rotary on the first rope.dimension_count dims of each head (pairs i, i + n_rot/2; base 10000)
 *   attn = softmax(q·kᵀ / sqrt(head_dim), causal) · v, per head        (llama.cpp scales Q before the matmul)
 *   a    = attn_output.weight · attn + attn_output.bias
 *   m    = ffn_down.weight · gelu_tanh(ffn_up.weight · h + ffn_up.bias) + ffn_down.bias
 *   x'   = x + a + m
 * then logits = output.weight · LayerNorm(x; output_norm) + output.bias.
 *
 * GGUF layout: a weight with ggml dims [ne0 = in, ne1 = out] is `out` rows of `in` contiguous floats, so
 * y[j] = Σ_i W[j·in + i] · x[i]. Everything is computed in float64 from the file's f32 (or f16/bf16/q8_0,
 * dequantized) weights, with a KV cache so greedy decoding costs one token per step.
 *
 * Precision emulation (off by default): llama.cpp on the CPU stores the KV cache as f16, evaluates GELU through an
 * f16 lookup table and, for batches of < 64 query rows, runs flash attention with Q and the accumulator in f16.
 * `kvF16` / `geluF16` / `attnF16` (all three: GGML_CPU_PRECISION) round the same values at the same places. With
 * them the reference matches llama.cpp to ~1e-4 on the tiny test models; the pure float64 pass differs by up to
 * ~1e-3, all of it from that f16 rounding.
 */
import { readGGUF, readTensorF32, f16ToF32 } from "../../src/gguf/reader.js";
import { f32ToF16Bits } from "../../src/gguf/writer.js";
import type { GGUFHeader } from "../../src/gguf/types.js";

export interface Phi2ReferenceOptions {
    /** Round K and V to f16 when they enter the cache (llama.cpp's default cache type). */
    kvF16?: boolean;
    /** GELU through an f16 table like ggml's CPU backend: gelu(x) = f16(gelu(f16(x))) for |x| < 10. */
    geluF16?: boolean;
    /**
     * ggml's CPU flash attention for batches of fewer than 64 query rows (every decode step, short prompts):
     * Q rounded to f16, and the online-softmax accumulator kept in f16 (ops.cpp flash_attn_ext_f16_one_chunk).
     * Batches of 64+ rows take the tiled path, which is f32 throughout (only the f16 cache rounds).
     */
    attnF16?: boolean;
}

/** All of the above: the reference rounds where llama.cpp's CPU backend rounds. */
export const GGML_CPU_PRECISION: Readonly<Phi2ReferenceOptions> = Object.freeze({ kvF16: true, geluF16: true, attnF16: true });

/** ggml's GGML_FA_TILE_Q: CPU flash attention switches to its f32 tiled path at this many query rows. */
const FA_TILE_Q = 64;

interface Layer {
    normW: Float32Array; normB: Float32Array;
    qkvW: Float32Array; qkvB: Float32Array;
    oW: Float32Array; oB: Float32Array;
    upW: Float32Array; upB: Float32Array;
    downW: Float32Array; downB: Float32Array;
}

export interface Phi2Config {
    vocab: number;
    embd: number;
    ffn: number;
    layers: number;
    heads: number;
    headsKV: number;
    headDim: number;
    nRot: number;
    eps: number;
    freqBase: number;
    eosId: number | undefined;
}

function metaU32(h: GGUFHeader, key: string): number | undefined {
    const v = h.metadata[key];
    return typeof v === "number" ? v : undefined;
}

function requireU32(h: GGUFHeader, key: string): number {
    const v = metaU32(h, key);
    if (v === undefined) throw new Error(`reference: ${h.path} has no '${key}'`);
    return v;
}

const f16 = (x: number): number => f16ToF32(f32ToF16Bits(x));

const SQRT_2_OVER_PI = 0.79788456080286535587989211986876;
const GELU_COEF_A = 0.044715;

function geluTanh(x: number): number {
    return 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * x * (1 + GELU_COEF_A * x * x)));
}

/** out[j] = Σ_i W[j·n + i]·x[i] + b[j], W with `m` rows of `n` floats. */
function matvec(W: Float32Array, b: Float32Array | undefined, x: Float64Array, n: number, m: number, out: Float64Array): Float64Array {
    for (let j = 0; j < m; j++) {
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const base = j * n;
        let i = 0;
        for (; i + 3 < n; i += 4) {
            s0 += W[base + i]! * x[i]!;
            s1 += W[base + i + 1]! * x[i + 1]!;
            s2 += W[base + i + 2]! * x[i + 2]!;
            s3 += W[base + i + 3]! * x[i + 3]!;
        }
        for (; i < n; i++) s0 += W[base + i]! * x[i]!;
        out[j] = s0 + s1 + s2 + s3 + (b ? b[j]! : 0);
    }
    return out;
}

function layerNorm(x: Float64Array, w: Float32Array, b: Float32Array, eps: number, out: Float64Array): Float64Array {
    const n = x.length;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[i]!;
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (x[i]! - mean) ** 2;
    v /= n;
    const inv = 1 / Math.sqrt(v + eps);
    for (let i = 0; i < n; i++) out[i] = (x[i]! - mean) * inv * w[i]! + b[i]!;
    return out;
}

export class Phi2Reference {
    private constructor(
        readonly config: Phi2Config,
        private readonly tokEmbd: Float32Array,
        private readonly layers: Layer[],
        private readonly outNormW: Float32Array,
        private readonly outNormB: Float32Array,
        private readonly outW: Float32Array,
        private readonly outB: Float32Array,
        readonly options: Phi2ReferenceOptions,
    ) {}

    /** Reads a phi2 GGUF's weights (F32/F16/BF16/Q8_0 tensors) into memory. */
    static async load(path: string, options: Phi2ReferenceOptions = {}): Promise<Phi2Reference> {
        const h = await readGGUF(path);
        if (h.metadata["general.architecture"] !== "phi2") throw new Error(`reference: ${path} is not a phi2 model`);
        const embd = requireU32(h, "phi2.embedding_length");
        const heads = requireU32(h, "phi2.attention.head_count");
        const headDim = embd / heads;
        const tokens = h.metadata["tokenizer.ggml.tokens"];
        const fb = h.metadata["phi2.rope.freq_base"];
        const config: Phi2Config = {
            vocab: Array.isArray(tokens) ? tokens.length : 0,
            embd,
            ffn: requireU32(h, "phi2.feed_forward_length"),
            layers: requireU32(h, "phi2.block_count"),
            heads,
            headsKV: metaU32(h, "phi2.attention.head_count_kv") ?? heads,
            headDim,
            nRot: metaU32(h, "phi2.rope.dimension_count") ?? headDim,
            eps: h.metadata["phi2.attention.layer_norm_epsilon"] as number,
            freqBase: typeof fb === "number" ? fb : 10000,
            eosId: metaU32(h, "tokenizer.ggml.eos_token_id"),
        };
        const t = (name: string) => readTensorF32(h, name);
        const layers: Layer[] = [];
        for (let i = 0; i < config.layers; i++) {
            const b = `blk.${i}.`;
            let qkvW: Float32Array, qkvB: Float32Array;
            if (h.tensors.some((x) => x.name === `${b}attn_qkv.weight`)) {
                qkvW = await t(`${b}attn_qkv.weight`);
                qkvB = await t(`${b}attn_qkv.bias`);
            } else { // separate q/k/v: concatenate into the fused layout
                const parts = await Promise.all(["q", "k", "v"].map((p) => t(`${b}attn_${p}.weight`)));
                const biases = await Promise.all(["q", "k", "v"].map((p) => t(`${b}attn_${p}.bias`)));
                qkvW = concat(parts);
                qkvB = concat(biases);
            }
            layers.push({
                normW: await t(`${b}attn_norm.weight`), normB: await t(`${b}attn_norm.bias`),
                qkvW, qkvB,
                oW: await t(`${b}attn_output.weight`), oB: await t(`${b}attn_output.bias`),
                upW: await t(`${b}ffn_up.weight`), upB: await t(`${b}ffn_up.bias`),
                downW: await t(`${b}ffn_down.weight`), downB: await t(`${b}ffn_down.bias`),
            });
        }
        return new Phi2Reference(config, await t("token_embd.weight"), layers,
            await t("output_norm.weight"), await t("output_norm.bias"), await t("output.weight"), await t("output.bias"), options);
    }

    /** A fresh sequence (its own KV cache). */
    session(): Phi2Session {
        return new Phi2Session(this);
    }

    /** Logits after `tokens` (a fresh session). */
    logits(tokens: readonly number[]): Float64Array {
        return this.session().feed(tokens);
    }

    /**
     * Greedy decoding like generate() with temperature 0: up to `maxTokens` tokens, stopping after the EOS token.
     * `margins[i]` is the gap between the best and second-best logit at step i (how safe the argmax is).
     */
    greedy(prompt: readonly number[], maxTokens: number): { tokens: number[]; margins: number[]; firstLogits: Float64Array } {
        const s = this.session();
        let logits = s.feed(prompt);
        const firstLogits = logits;
        const tokens: number[] = [];
        const margins: number[] = [];
        for (let step = 0; step < maxTokens; step++) {
            const { best, margin } = argmax(logits);
            tokens.push(best);
            margins.push(margin);
            if (best === this.config.eosId) break;
            if (step + 1 < maxTokens) logits = s.feed([best]);
        }
        return { tokens, margins, firstLogits };
    }

    /** @internal one token through the network at position `pos`; returns the logits when `wantLogits`. */
    forward(token: number, pos: number, cache: KVCache, wantLogits: boolean, batchRows = 1): Float64Array | undefined {
        const c = this.config;
        const E = c.embd, hd = c.headDim, Ekv = c.headsKV * hd;
        if (!Number.isInteger(token) || token < 0 || token >= c.vocab) throw new RangeError(`reference: token ${token} out of range`);
        const x = new Float64Array(E);
        for (let i = 0; i < E; i++) x[i] = this.tokEmbd[token * E + i]!;
        const h = new Float64Array(E);
        const qkv = new Float64Array(E + 2 * Ekv);
        const attn = new Float64Array(E);
        const a = new Float64Array(E);
        const up = new Float64Array(c.ffn);
        const m = new Float64Array(E);
        const rope = ropeTables(pos, c.nRot, c.freqBase);
        const scale = 1 / Math.sqrt(hd);
        const n = pos + 1;
        const scores = new Float64Array(n);

        for (let l = 0; l < c.layers; l++) {
            const L = this.layers[l]!;
            layerNorm(x, L.normW, L.normB, c.eps, h);
            matvec(L.qkvW, L.qkvB, h, E, E + 2 * Ekv, qkv);
            const q = qkv.subarray(0, E);
            const k = qkv.subarray(E, E + Ekv);
            const v = qkv.subarray(E + Ekv, E + 2 * Ekv);
            for (let hh = 0; hh < c.heads; hh++) applyRope(q, hh * hd, c.nRot, rope);
            for (let hh = 0; hh < c.headsKV; hh++) applyRope(k, hh * hd, c.nRot, rope);
            cache.put(l, pos, k, v, this.options.kvF16 === true);

            const group = c.heads / c.headsKV;
            const f16Attention = this.options.attnF16 === true && batchRows < FA_TILE_Q;
            for (let hh = 0; hh < c.heads; hh++) {
                const kvh = Math.floor(hh / group);
                if (f16Attention) {
                    attentionF16(q, hh * hd, kvh * hd, hd, scale, n, cache, l, attn);
                    continue;
                }
                let max = -Infinity;
                for (let p = 0; p < n; p++) {
                    const kp = cache.k(l, p);
                    let s = 0;
                    for (let d = 0; d < hd; d++) s += q[hh * hd + d]! * kp[kvh * hd + d]!;
                    s *= scale;
                    scores[p] = s;
                    if (s > max) max = s;
                }
                let sum = 0;
                for (let p = 0; p < n; p++) {
                    scores[p] = Math.exp(scores[p]! - max);
                    sum += scores[p]!;
                }
                for (let d = 0; d < hd; d++) attn[hh * hd + d] = 0;
                for (let p = 0; p < n; p++) {
                    const w = scores[p]! / sum;
                    const vp = cache.v(l, p);
                    for (let d = 0; d < hd; d++) attn[hh * hd + d] += w * vp[kvh * hd + d]!;
                }
            }
            matvec(L.oW, L.oB, attn, E, E, a);

            matvec(L.upW, L.upB, h, E, c.ffn, up);
            const geluF16 = this.options.geluF16 === true;
            for (let i = 0; i < c.ffn; i++) {
                const u = up[i]!;
                if (!geluF16) up[i] = geluTanh(u);
                else if (u <= -10) up[i] = 0;
                else if (u >= 10) up[i] = u;
                else up[i] = f16(geluTanh(f16(u)));
            }
            matvec(L.downW, L.downB, up, c.ffn, E, m);
            for (let i = 0; i < E; i++) x[i] = x[i]! + a[i]! + m[i]!;
        }
        if (!wantLogits) return undefined;
        const xn = layerNorm(x, this.outNormW, this.outNormB, c.eps, new Float64Array(E));
        return matvec(this.outW, this.outB, xn, E, c.vocab, new Float64Array(c.vocab));
    }
}

/**
 * One head's attention the way ggml_compute_forward_flash_attn_ext_f16_one_chunk computes it with an f16 cache:
 * Q rounded to f16, scores in f32, online softmax over the positions in order, V·softmax accumulated in f16.
 */
function attentionF16(q: Float64Array, qOff: number, kvOff: number, hd: number, scale: number, n: number,
    cache: KVCache, layer: number, out: Float64Array): void {
    const fr = Math.fround;
    const qh = new Float64Array(hd);
    for (let d = 0; d < hd; d++) qh[d] = f16(q[qOff + d]!);
    const acc = new Float64Array(hd);
    let S = 0, M = -Infinity;
    for (let p = 0; p < n; p++) {
        const kp = cache.k(layer, p);
        let s = 0;
        for (let d = 0; d < hd; d++) s += qh[d]! * kp[kvOff + d]!;
        s = fr(fr(s) * scale);
        let ms = 1, vs = 1;
        if (s > M) {
            const Mold = M;
            M = s;
            ms = fr(Math.exp(Mold - M));
            for (let d = 0; d < hd; d++) acc[d] = f16(acc[d]! * ms);
        } else {
            vs = fr(Math.exp(s - M));
        }
        const vp = cache.v(layer, p);
        for (let d = 0; d < hd; d++) acc[d] = f16(acc[d]! + vp[kvOff + d]! * vs);
        S = fr(S * ms + vs);
    }
    for (let d = 0; d < hd; d++) out[qOff + d] = acc[d]! / S;
}

function concat(parts: Float32Array[]): Float32Array {
    const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
    let o = 0;
    for (const p of parts) {
        out.set(p, o);
        o += p.length;
    }
    return out;
}

/** cos/sin of pos·base^(-2i/nRot), i < nRot/2 (NeoX rotary, as ggml_rope_ext with mode NEOX, no scaling). */
function ropeTables(pos: number, nRot: number, base: number): { cos: Float64Array; sin: Float64Array } {
    const half = nRot / 2;
    const cos = new Float64Array(half), sin = new Float64Array(half);
    for (let i = 0; i < half; i++) {
        const theta = pos * Math.pow(base, (-2 * i) / nRot);
        cos[i] = Math.cos(theta);
        sin[i] = Math.sin(theta);
    }
    return { cos, sin };
}

/** NeoX rotary on dims [off, off + nRot) of one head: pairs (i, i + nRot/2); later dims pass through. */
function applyRope(x: Float64Array, off: number, nRot: number, t: { cos: Float64Array; sin: Float64Array }): void {
    const half = nRot / 2;
    for (let i = 0; i < half; i++) {
        const x0 = x[off + i]!, x1 = x[off + i + half]!;
        x[off + i] = x0 * t.cos[i]! - x1 * t.sin[i]!;
        x[off + i + half] = x0 * t.sin[i]! + x1 * t.cos[i]!;
    }
}

class KVCache {
    private readonly keys: Float64Array[][] = [];
    private readonly values: Float64Array[][] = [];

    constructor(layers: number) {
        for (let l = 0; l < layers; l++) {
            this.keys.push([]);
            this.values.push([]);
        }
    }

    put(layer: number, pos: number, k: Float64Array, v: Float64Array, asF16: boolean): void {
        const kk = Float64Array.from(k), vv = Float64Array.from(v);
        if (asF16) {
            for (let i = 0; i < kk.length; i++) kk[i] = f16(kk[i]!);
            for (let i = 0; i < vv.length; i++) vv[i] = f16(vv[i]!);
        }
        this.keys[layer]![pos] = kk;
        this.values[layer]![pos] = vv;
    }

    k(layer: number, pos: number): Float64Array {
        return this.keys[layer]![pos]!;
    }

    v(layer: number, pos: number): Float64Array {
        return this.values[layer]![pos]!;
    }
}

/** One sequence: feed tokens, get the logits after the last one. */
export class Phi2Session {
    private readonly cache: KVCache;
    private pos = 0;

    constructor(private readonly ref: Phi2Reference) {
        this.cache = new KVCache(ref.config.layers);
    }

    get length(): number {
        return this.pos;
    }

    /** Tokens fed together count as one batch (this matters only for `attnF16`). */
    feed(tokens: readonly number[]): Float64Array {
        if (tokens.length === 0) throw new RangeError("reference: feed() needs at least one token");
        let logits: Float64Array | undefined;
        for (let i = 0; i < tokens.length; i++) {
            logits = this.ref.forward(tokens[i]!, this.pos++, this.cache, i === tokens.length - 1, tokens.length);
        }
        return logits!;
    }
}

/** Index of the largest value (first on ties) and its lead over the runner-up. */
export function argmax(values: ArrayLike<number>): { best: number; margin: number } {
    let best = 0, bestV = -Infinity, secondV = -Infinity;
    for (let i = 0; i < values.length; i++) {
        const v = values[i]!;
        if (v > bestV) {
            secondV = bestV;
            bestV = v;
            best = i;
        } else if (v > secondV) secondV = v;
    }
    return { best, margin: bestV - secondV };
}

/** max |a[i] - b[i]| and where it is. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; at: number } {
    if (a.length !== b.length) throw new RangeError(`length ${a.length} vs ${b.length}`);
    let max = 0, at = -1;
    for (let i = 0; i < a.length; i++) {
        const d = Math.abs(a[i]! - b[i]!);
        if (!(d <= max)) { // NaN counts as a difference
            max = d;
            at = i;
        }
    }
    return { max, at };
}
