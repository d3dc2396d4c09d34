/**
 * A phi2-architecture GGUF with hand-set weights whose greedy output is known in advance: it repeats a cycle of
 * tokens forever (c0 → c1 → … → ck → c0). Used to make the model generate exactly the text a test needs, e.g.
 * multi-byte characters split across byte-level tokens.
 *
 * How: attn_output and ffn_down are zero, so every block adds nothing and the final hidden state is the token's
 * embedding. Cycle token i embeds as the one-hot vector e_i; LayerNorm turns it into a vector peaked at dim i; the
 * output row of the next cycle token is 10·e_i, so its logit (~79) beats every other (≤ 0). Real Phi-2 vocabulary.
 */
import { GGMLType, QUANT_TYPES } from "../../src/gguf/types.js";
import { kv, writeGGUF, type GGUFTensorSpec } from "../../src/gguf/writer.js";
import { phi2HParamsKV } from "../../src/testModel/makeTestModel.js";
import { loadPhi2Vocab, phi2VocabKV, PHI2_VOCAB_SIZE } from "../../src/testModel/vocab.js";

const E = 64;

export async function writeCycleModel(path: string, cycle: readonly number[]): Promise<void> {
    if (cycle.length < 2 || cycle.length > E) throw new RangeError(`cycle must have 2..${E} tokens`);
    if (new Set(cycle).size !== cycle.length) throw new RangeError(`cycle tokens must be distinct (a token has one successor): ${cycle.join(" ")}`);
    const V = PHI2_VOCAB_SIZE, F = E;
    const vocab = await loadPhi2Vocab();
    const embd = new Float32Array(E * V);
    const out = new Float32Array(E * V);
    cycle.forEach((tok, i) => {
        embd[tok * E + i] = 1;
        const next = cycle[(i + 1) % cycle.length]!;
        out[next * E + i] = 10;
    });
    const zeros = (n: number) => new Float32Array(n);
    const ones = (n: number) => new Float32Array(n).fill(1);
    const tensors: GGUFTensorSpec[] = [
        { name: "token_embd.weight", dims: [E, V], type: GGMLType.F16, data: embd },
        { name: "blk.0.attn_norm.weight", dims: [E], type: GGMLType.F32, data: ones(E) },
        { name: "blk.0.attn_norm.bias", dims: [E], type: GGMLType.F32, data: zeros(E) },
        { name: "blk.0.attn_qkv.weight", dims: [E, 3 * E], type: GGMLType.F32, data: zeros(3 * E * E) },
        { name: "blk.0.attn_qkv.bias", dims: [3 * E], type: GGMLType.F32, data: zeros(3 * E) },
        { name: "blk.0.attn_output.weight", dims: [E, E], type: GGMLType.F32, data: zeros(E * E) },
        { name: "blk.0.attn_output.bias", dims: [E], type: GGMLType.F32, data: zeros(E) },
        { name: "blk.0.ffn_up.weight", dims: [E, F], type: GGMLType.F32, data: zeros(E * F) },
        { name: "blk.0.ffn_up.bias", dims: [F], type: GGMLType.F32, data: zeros(F) },
        { name: "blk.0.ffn_down.weight", dims: [F, E], type: GGMLType.F32, data: zeros(E * F) },
        { name: "blk.0.ffn_down.bias", dims: [E], type: GGMLType.F32, data: zeros(E) },
        { name: "output_norm.weight", dims: [E], type: GGMLType.F32, data: ones(E) },
        { name: "output_norm.bias", dims: [E], type: GGMLType.F32, data: zeros(E) },
        { name: "output.weight", dims: [E, V], type: GGMLType.F16, data: out },
        { name: "output.bias", dims: [V], type: GGMLType.F32, data: zeros(V) },
    ];
    await writeGGUF(path, {
        metadata: [
            kv.str("general.architecture", "phi2"),
            kv.str("general.name", "phi2-cycle-test"),
            kv.u32("general.file_type", QUANT_TYPES.f16),
            ...phi2HParamsKV({ context: 512, embedding: E, ffn: F, layers: 1, heads: 2, rotary: 32 }),
            ...phi2VocabKV(vocab),
        ],
        tensors,
    });
}
