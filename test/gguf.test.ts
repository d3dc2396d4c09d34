import { expect } from "chai";
import { mkdtemp, readFile, rm, writeFile, mkdir, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GGUFError, PhiAgentError } from "../src/errors.js";
import { readGGUF, readTensorF32 } from "../src/gguf/reader.js";
import { GGMLType, GGUFValueType, type GGUFHeader, type GGUFKV } from "../src/gguf/types.js";
import { checkPhi2, inspectGGUF, readAndCheckPhi2 } from "../src/gguf/validate.js";
import { encodeQ8_0, f32ToF16Bits, kv, writeGGUF } from "../src/gguf/writer.js";
import { gpt2VocabPath } from "../src/testModel/vocab.js";
import { tinyModel } from "./helpers/models.js";

/** Little-endian byte builder for hand-made (possibly malformed) GGUF files. */
class Bytes {
    private parts: Buffer[] = [];
    raw(b: Uint8Array | number[]): this { this.parts.push(Buffer.from(b)); return this; }
    u32(v: number): this { const b = Buffer.alloc(4); b.writeUInt32LE(v); return this.raw(b); }
    u64(v: bigint | number): this { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return this.raw(b); }
    str(s: string): this { const b = Buffer.from(s, "utf8"); return this.u64(b.length).raw(b); }
    get length(): number { return this.parts.reduce((a, b) => a + b.length, 0); }
    pad(a: number): this { const n = (a - (this.length % a)) % a; return this.raw(new Uint8Array(n)); }
    build(): Buffer { return Buffer.concat(this.parts); }
}

/** magic + version + counts */
function head(nTensors: bigint | number, nKV: bigint | number, version = 3): Bytes {
    return new Bytes().raw(Buffer.from("GGUF")).u32(version).u64(nTensors).u64(nKV);
}

/** One valid file: 1 string KV, 1 F32 tensor "w" of [4] = 16 bytes. */
function validFile(): Buffer {
    const b = head(1, 1).str("general.name").u32(GGUFValueType.STRING).str("x");
    b.str("w").u32(1).u64(4).u32(GGMLType.F32).u64(0).pad(32);
    b.raw(Buffer.from(new Float32Array([1, 2, 3, 4]).buffer));
    return b.build();
}

async function expectGGUFError(p: Promise<unknown>, ...fragments: (string | RegExp)[]): Promise<GGUFError> {
    let err: unknown;
    try {
        await p;
    } catch (e) {
        err = e;
    }
    expect(err, "expected a GGUFError").to.be.instanceOf(GGUFError);
    const msg = (err as Error).message;
    for (const f of fragments) {
        if (typeof f === "string") expect(msg).to.include(f);
        else expect(msg).to.match(f);
    }
    return err as GGUFError;
}

function expectSyncGGUFError(fn: () => unknown, ...fragments: string[]): GGUFError {
    let err: unknown;
    try {
        fn();
    } catch (e) {
        err = e;
    }
    expect(err, "expected a GGUFError").to.be.instanceOf(GGUFError);
    for (const f of fragments) expect((err as Error).message).to.include(f);
    return err as GGUFError;
}

describe("gguf reader/writer", function () {
    let dir: string;
    before(async () => {
        dir = await mkdtemp(join(tmpdir(), "phi-gguf-"));
    });
    after(async () => {
        await rm(dir, { recursive: true, force: true });
    });

    const file = async (name: string, bytes: Uint8Array) => {
        const p = join(dir, name);
        await writeFile(p, bytes);
        return p;
    };

    describe("round trip", () => {
        const metadata: GGUFKV[] = [
            kv.u8("t.u8", 255),
            kv.i8("t.i8", -128),
            kv.u16("t.u16", 65535),
            kv.i16("t.i16", -32768),
            kv.u32("t.u32", 4294967295),
            kv.i32("t.i32", -2147483648),
            kv.f32("t.f32", 1e-5),
            kv.bool("t.bool", true),
            kv.str("t.str", "héllo ✓ 🚀"),
            kv.u64("t.u64", 18446744073709551615n),
            kv.i64("t.i64", -9223372036854775808n),
            kv.f64("t.f64", Math.PI),
            kv.arr("a.u8", GGUFValueType.UINT8, [0, 1, 255]),
            kv.arr("a.i8", GGUFValueType.INT8, [-1, 127]),
            kv.arr("a.u16", GGUFValueType.UINT16, [1, 65535]),
            kv.arr("a.i16", GGUFValueType.INT16, [-2, 3]),
            kv.arr("a.u32", GGUFValueType.UINT32, new Uint32Array([7, 4000000000])),
            kv.i32Arr("a.i32", [1, -1, 4]),
            kv.f32Arr("a.f32", new Float32Array([0.5, -2])),
            kv.arr("a.bool", GGUFValueType.BOOL, [true, false, true]),
            kv.strArr("a.str", ["a", "", "Ġthe", "   ", "\t\t"]),
            kv.arr("a.u64", GGUFValueType.UINT64, [1n, 2n ** 63n]),
            kv.arr("a.i64", GGUFValueType.INT64, new BigInt64Array([-5n, 6n])),
            kv.arr("a.f64", GGUFValueType.FLOAT64, [1.5, -0.25]),
            kv.arr("a.empty", GGUFValueType.STRING, []),
            kv.arr("a.nested", GGUFValueType.ARRAY, {
                nested: [
                    { type: GGUFValueType.INT32, value: new Int32Array([1, 2]) },
                    { type: GGUFValueType.STRING, value: ["x", "y"] },
                    { type: GGUFValueType.ARRAY, value: { nested: [{ type: GGUFValueType.UINT8, value: new Uint8Array([9]) }] } },
                ],
            }),
        ];

        const n = 64;
        const values = new Float32Array(2 * n).map((_, i) => Math.sin(i) * 3);
        const q4raw = new Uint8Array(18 * 2).map((_, i) => i);

        it("reads back every KV type, tensor infos and tensor data the writer wrote", async () => {
            const path = join(dir, "roundtrip.gguf");
            const progress: number[] = [];
            const res = await writeGGUF(path, {
                metadata,
                tensors: [
                    { name: "f32", dims: [n, 2], type: GGMLType.F32, data: values },
                    { name: "f16", dims: [n, 2], type: GGMLType.F16, data: values },
                    { name: "q8", dims: [n, 2], type: GGMLType.Q8_0, data: values },
                    { name: "q4raw", dims: [64], type: GGMLType.Q4_0, data: q4raw },
                    { name: "odd", dims: [3], type: GGMLType.F32, data: new Float32Array([1, 2, 3]) },
                ],
            }, (f) => progress.push(f));
            expect(progress.at(-1)).to.equal(1);
            for (let i = 1; i < progress.length; i++) expect(progress[i]).to.be.at.least(progress[i - 1]!);

            const h = await readGGUF(path);
            expect(h.version).to.equal(3);
            expect(h.alignment).to.equal(32);
            expect(h.fileSize).to.equal(res.bytes);
            expect(h.dataOffset % 32).to.equal(0);
            expect(h.kv.map((e) => e.key)).to.deep.equal(metadata.map((e) => e.key));
            for (const e of metadata) {
                const got = h.kv.find((x) => x.key === e.key)!;
                expect(got.type, e.key).to.equal(e.type);
                expect(got.arrayType, e.key).to.equal(e.arrayType);
            }
            const m = h.metadata;
            expect(m["t.u8"]).to.equal(255);
            expect(m["t.i8"]).to.equal(-128);
            expect(m["t.u16"]).to.equal(65535);
            expect(m["t.i16"]).to.equal(-32768);
            expect(m["t.u32"]).to.equal(4294967295);
            expect(m["t.i32"]).to.equal(-2147483648);
            expect(m["t.f32"]).to.equal(Math.fround(1e-5));
            expect(m["t.bool"]).to.equal(true);
            expect(m["t.str"]).to.equal("héllo ✓ 🚀");
            expect(m["t.u64"]).to.equal(18446744073709551615n);
            expect(m["t.i64"]).to.equal(-9223372036854775808n);
            expect(m["t.f64"]).to.equal(Math.PI);
            expect(m["a.u8"]).to.be.instanceOf(Uint8Array).and.deep.equal(new Uint8Array([0, 1, 255]));
            expect(m["a.i8"]).to.deep.equal(new Int8Array([-1, 127]));
            expect(m["a.u16"]).to.deep.equal(new Uint16Array([1, 65535]));
            expect(m["a.i16"]).to.deep.equal(new Int16Array([-2, 3]));
            expect(m["a.u32"]).to.deep.equal(new Uint32Array([7, 4000000000]));
            expect(m["a.i32"]).to.deep.equal(new Int32Array([1, -1, 4]));
            expect(m["a.f32"]).to.deep.equal(new Float32Array([0.5, -2]));
            expect(m["a.bool"]).to.deep.equal([true, false, true]);
            expect(m["a.str"]).to.deep.equal(["a", "", "Ġthe", "   ", "\t\t"]);
            expect(m["a.u64"]).to.deep.equal(new BigUint64Array([1n, 2n ** 63n]));
            expect(m["a.i64"]).to.deep.equal(new BigInt64Array([-5n, 6n]));
            expect(m["a.f64"]).to.deep.equal(new Float64Array([1.5, -0.25]));
            expect(m["a.empty"]).to.deep.equal([]);
            expect(m["a.nested"]).to.deep.equal({
                nested: [
                    { type: GGUFValueType.INT32, value: new Int32Array([1, 2]) },
                    { type: GGUFValueType.STRING, value: ["x", "y"] },
                    { type: GGUFValueType.ARRAY, value: { nested: [{ type: GGUFValueType.UINT8, value: new Uint8Array([9]) }] } },
                ],
            });

            expect(h.tensors.map((t) => [t.name, t.dims, t.type, t.byteSize])).to.deep.equal([
                ["f32", [n, 2], GGMLType.F32, 2 * n * 4],
                ["f16", [n, 2], GGMLType.F16, 2 * n * 2],
                ["q8", [n, 2], GGMLType.Q8_0, 4 * 34],
                ["q4raw", [64], GGMLType.Q4_0, 36],
                ["odd", [3], GGMLType.F32, 12],
            ]);
            for (const t of h.tensors) expect(t.offset % 32, t.name).to.equal(0);
            expect(h.tensors[4]!.offset + 12 + h.dataOffset).to.be.at.most(h.fileSize);

            expect(await readTensorF32(h, "f32")).to.deep.equal(values);
            const f16 = await readTensorF32(h, "f16");
            values.forEach((v, i) => expect(Math.abs(f16[i]! - v)).to.be.at.most(Math.abs(v) * 2 ** -11 + 1e-7));
            const q8 = await readTensorF32(h, "q8");
            for (let b = 0; b < 4; b++) {
                const block = values.subarray(b * 32, b * 32 + 32);
                const amax = Math.max(...Array.from(block, Math.abs));
                block.forEach((v, j) => expect(Math.abs(q8[b * 32 + j]! - v)).to.be.at.most(amax / 127 * 0.51 + 1e-3));
            }
            await expectGGUFError(readTensorF32(h, "q4raw"), "Q4_0", "F32, F16, BF16 and Q8_0");
            await expectGGUFError(readTensorF32(h, "nope"), "tensor 'nope' is not in the file");
            const raw = await readFile(path);
            const q4 = h.tensors.find((t) => t.name === "q4raw")!;
            expect(new Uint8Array(raw.subarray(h.dataOffset + q4.offset, h.dataOffset + q4.offset + 36))).to.deep.equal(q4raw);
        });

        it("a producer emitting odd-sized chunks writes the same bytes as one Float32Array", async () => {
            const direct = join(dir, "direct.gguf");
            const chunked = join(dir, "chunked.gguf");
            const spec = (data: Float32Array | ((emit: (v: Float32Array) => Promise<void>) => Promise<void>)) => ({
                metadata: [kv.str("general.name", "c")],
                tensors: [
                    { name: "q", dims: [n, 2], type: GGMLType.Q8_0, data },
                    { name: "h", dims: [n, 2], type: GGMLType.F16, data },
                ],
            });
            await writeGGUF(direct, spec(values));
            await writeGGUF(chunked, spec(async (emit) => {
                for (let o = 0, k = 1; o < values.length; k += 6) {
                    await emit(values.slice(o, Math.min(values.length, o + k)));
                    o = Math.min(values.length, o + k);
                }
            }));
            expect((await readFile(chunked)).equals(await readFile(direct))).to.equal(true);
        });

        it("reads string arrays larger than its read chunk exactly, whatever the string lengths", async () => {
            // 3 MiB of strings: every one of them lies in, straddles, or exceeds the reader's 1 MiB chunks somewhere.
            const strings: string[] = [];
            for (let i = 0, bytes = 0; bytes < 3 << 20; i++) {
                const s = i % 997 === 0 ? "x".repeat(70_000 + i) // longer than many chunks' remainder
                    : i % 5 === 0 ? "" : i % 3 === 0 ? `Ġtok${i}✓🚀` : `t${i}`.repeat(1 + (i % 40));
                strings.push(s);
                bytes += 8 + Buffer.byteLength(s);
            }
            const path = join(dir, "strings.gguf");
            await writeGGUF(path, { metadata: [kv.strArr("a.str", strings), kv.u32("after", 7)], tensors: [] });
            const h = await readGGUF(path);
            expect(h.metadata["a.str"]).to.deep.equal(strings);
            expect(h.metadata["after"]).to.equal(7);
            const size = (await readFile(path)).length;
            await expectGGUFError(readGGUF(path, { maxHeaderBytes: size - 4096 }), "header too large");
            await expectGGUFError(readGGUF(await file("strings-cut.gguf", (await readFile(path)).subarray(0, 2 << 20))), "a.str");
        });

        it("encodes f16 with round-to-nearest-even and Q8_0 like ggml", () => {
            const cases: [number, number][] = [
                [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [65504, 0x7bff],
                [65520, 0x7c00], [Infinity, 0x7c00], [2 ** -24, 0x0001], [2 ** -26, 0x0000], [1 + 2 ** -11, 0x3c00],
                [1 + 3 * 2 ** -11, 0x3c02], [6.1035156e-5, 0x0400],
            ];
            for (const [x, bits] of cases) expect(f32ToF16Bits(x), String(x)).to.equal(bits);
            expect(f32ToF16Bits(NaN) & 0x7c00).to.equal(0x7c00);
            expect(f32ToF16Bits(NaN) & 0x3ff).to.not.equal(0);

            const block = new Float32Array(32).map((_, j) => j - 16); // amax 16 -> d = 16/127
            const out = new Uint8Array(34);
            encodeQ8_0(block, out);
            expect(out[0]! | (out[1]! << 8)).to.equal(f32ToF16Bits(Math.fround(16 / 127)));
            const q = new Int8Array(out.buffer, 2, 32);
            expect(q[0]).to.equal(-127); // -16
            expect(q[16]).to.equal(0); // 0
            expect(q[31]).to.equal(119); // 15 * 127/16 = 119.06
            expect(q[24]).to.equal(64); // 8 * 7.9375 = 63.5 -> away from zero
            expect(q[8]).to.equal(-64); // -8 -> -63.5 -> away from zero
        });

        it("refuses bad writer input with a GGUFError and leaves no partial file", async () => {
            const p = join(dir, "bad-write.gguf");
            await expectGGUFError(writeGGUF(p, {
                metadata: [],
                tensors: [{ name: "t", dims: [64], type: GGMLType.Q8_0, data: async (emit) => { await emit(new Float32Array(40)); } }],
            }), "tensor 't'", "emitted 40 values", "needs 64");
            expect((await readdir(dir)).includes("bad-write.gguf")).to.equal(false);
            await expectGGUFError(writeGGUF(p, {
                metadata: [],
                tensors: [{ name: "t", dims: [32], type: GGMLType.F32, data: async (emit) => { await emit(new Float32Array(33)); } }],
            }), "more than the 32 values");
            await expectGGUFError(writeGGUF(p, { metadata: [kv.u32("x", -1)], tensors: [] }), "'x'", "uint32");
            await expectGGUFError(writeGGUF(p, { metadata: [kv.u8("x", 1), kv.u8("x", 2)], tensors: [] }), "duplicate key");
            await expectGGUFError(writeGGUF(p, {
                metadata: [], tensors: [{ name: "t", dims: [48], type: GGMLType.Q8_0, data: new Float32Array(48) }],
            }), "not a multiple of the Q8_0 block size 32");
            await expectGGUFError(writeGGUF(p, {
                metadata: [], tensors: [{ name: "t", dims: [256], type: GGMLType.Q4_K, data: new Float32Array(256) }],
            }), "cannot encode Q4_K");
            expect((await readdir(dir)).includes("bad-write.gguf")).to.equal(false);
        });
    });

    describe("hostile input", () => {
        it("accepts the hand-made valid file (sanity check for the mutations below)", async () => {
            const h = await readGGUF(await file("valid.gguf", validFile()));
            expect(h.tensors).to.deep.equal([{ name: "w", dims: [4], type: 0, offset: 0, byteSize: 16 }]);
            expect(Array.from(await readTensorF32(h, "w"))).to.deep.equal([1, 2, 3, 4]);
        });

        it("missing path and directories are ERR_MODEL_NOT_FOUND", async () => {
            for (const [p, frag] of [[join(dir, "nope.gguf"), "not found"], [dir, "is a directory"]] as const) {
                let err: unknown;
                try { await readGGUF(p); } catch (e) { err = e; }
                expect(err).to.be.instanceOf(PhiAgentError);
                expect((err as PhiAgentError).code).to.equal("ERR_MODEL_NOT_FOUND");
                expect((err as Error).message).to.include(frag);
            }
        });

        it("empty, PNG and bad-magic files are 'not a GGUF file'", async () => {
            await expectGGUFError(readGGUF(await file("empty.gguf", new Uint8Array(0))), "not a GGUF file", "empty");
            const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]);
            const e = await expectGGUFError(readGGUF(await file("x.png", png)), "not a GGUF file (magic", "89 50 4e 47");
            expect(e.code).to.equal("ERR_INVALID_GGUF");
            await expectGGUFError(readGGUF(await file("ab.gguf", Buffer.from("GG"))), "not a GGUF file");
            await expectGGUFError(readGGUF(await file("ggml.gguf", Buffer.from("ggjt\x03\0\0\0"))), "not a GGUF file", "ggjt");
        });

        const cases: [string, () => Buffer, (string | RegExp)[]][] = [
            ["version 1", () => head(0, 0, 1).build(), ["version is 1"]],
            ["version 7", () => head(0, 0, 7).build(), ["version is 7", "2 and 3"]],
            ["big-endian", () => head(0, 0, 0x03000000).build(), ["big-endian"]],
            ["n_tensors 2^62", () => head(2n ** 62n, 0).build(), ["n_tensors is 4611686018427387904"]],
            ["n_kv 2^62", () => head(0, 2n ** 62n).build(), ["n_kv is 4611686018427387904"]],
            ["n_kv 2^64-1", () => head(0, 2n ** 64n - 1n).build(), ["n_kv is 18446744073709551615"]],
            ["key length 2^40", () => head(0, 1).u64(2n ** 40n).raw(new Uint8Array(64)).build(), ["metadata key #0", "string length 1099511627776"]],
            ["empty key", () => head(0, 1).str("").u32(4).u32(1).build(), ["key #0 is empty"]],
            ["duplicate key", () => head(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).build(), ["'k' is duplicated"]],
            ["value type 13", () => head(0, 1).str("k").u32(13).u32(0).build(), ["'k'", "value type 13"]],
            ["array length 2^60", () => head(0, 1).str("k").u32(9).u32(4).u64(2n ** 60n).build(), ["'k'", "array length is 1152921504606846976"]],
            ["array of strings 2^50", () => head(0, 1).str("toks").u32(9).u32(8).u64(2n ** 50n).build(), ["'toks'", "array length"]],
            ["array element type 77", () => head(0, 1).str("k").u32(9).u32(77).u64(1).build(), ["'k'", "element type 77"]],
            ["string in array too long", () => head(0, 1).str("k").u32(9).u32(8).u64(1).u64(2n ** 33n).build(), ["'k'[0]", "string length 8589934592"]],
            ["bool value 7", () => head(0, 1).str("k").u32(7).raw([7]).build(), ["'k'", "bool value is 7"]],
            ["alignment 0", () => head(0, 1).str("general.alignment").u32(4).u32(0).build(), ["general.alignment", "power of two"]],
            ["alignment 48", () => head(0, 1).str("general.alignment").u32(4).u32(48).build(), ["general.alignment", "48"]],
            ["alignment as string", () => head(0, 1).str("general.alignment").u32(8).str("32").build(), ["general.alignment", "uint32"]],
            ["n_dims 0", () => head(1, 0).str("w").u32(0).raw(new Uint8Array(64)).build(), ["tensor #0 'w'", "n_dims is 0"]],
            ["n_dims 5", () => head(1, 0).str("w").u32(5).raw(new Uint8Array(64)).build(), ["'w'", "n_dims is 5"]],
            ["dim 0", () => head(1, 0).str("w").u32(2).u64(4).u64(0).build(), ["'w'", "dims[1] is 0"]],
            ["dims overflow", () => head(1, 0).str("w").u32(2).u64(2n ** 40n).u64(2n ** 40n).build(), ["'w'", "overflows"]],
            ["type id 999", () => head(1, 0).str("blk.0.attn_qkv.weight").u32(1).u64(32).u32(999).u64(0).build(),
                ["tensor 'blk.0.attn_qkv.weight': type id 999 is not a ggml type"]],
            ["removed type id 4", () => head(1, 0).str("w").u32(1).u64(32).u32(4).u64(0).build(), ["type id 4 is not a ggml type"]],
            ["row not a block multiple", () => head(1, 0).str("w").u32(1).u64(33).u32(GGMLType.Q8_0).u64(0).build(),
                ["'w'", "33", "Q8_0 block size 32"]],
            ["misaligned offset", () => head(1, 0).str("w").u32(1).u64(4).u32(0).u64(8).pad(32).raw(new Uint8Array(64)).build(),
                ["'w'", "offset 8", "alignment 32"]],
            ["data past the end", () => head(1, 0).str("w").u32(1).u64(64).u32(0).u64(0).pad(32).raw(new Uint8Array(220)).build(),
                ["'w'", "past the end"]],
            ["tensor bigger than the file", () => head(1, 0).str("w").u32(2).u64(2n ** 20n).u64(2n ** 20n).u32(0).u64(0).build(),
                ["'w'", "more than the whole file"]],
            ["duplicate tensor", () => head(2, 0).str("w").u32(1).u64(4).u32(0).u64(0).str("w").u32(1).u64(4).u32(0).u64(32).pad(32)
                .raw(new Uint8Array(64)).build(), ["'w'", "duplicate tensor name"]],
            ["overlapping tensors", () => head(2, 0).str("a").u32(1).u64(16).u32(0).u64(0).str("b").u32(1).u64(4).u32(0).u64(32).pad(32)
                .raw(new Uint8Array(64)).build(), ["'b'", "overlaps tensor 'a'"]],
            ["name too long", () => head(1, 0).str("x".repeat(64)).u32(1).u64(4).u32(0).u64(0).build(), ["name is 64 bytes"]],
        ];
        for (const [name, make, frags] of cases) {
            it(`refuses: ${name}`, async () => {
                await expectGGUFError(readGGUF(await file(`case-${name.replace(/\W+/g, "_")}.gguf`, make())), ...frags);
            });
        }

        it("refuses headers larger than maxHeaderBytes before allocating them", async () => {
            const b = head(0, 1).str("k").u32(9).u32(0).u64(5000).raw(new Uint8Array(5000)).build();
            await expectGGUFError(readGGUF(await file("big.gguf", b), { maxHeaderBytes: 1024 }), "header too large");
            const ok = await readGGUF(join(dir, "big.gguf"));
            expect((ok.metadata["k"] as Uint8Array).length).to.equal(5000);
        });

        it("every truncation of a valid file is a GGUFError", async () => {
            const good = validFile();
            for (let len = 0; len < good.length; len++) {
                const p = await file("trunc.gguf", good.subarray(0, len));
                await expectGGUFError(readGGUF(p));
            }
        });

        it("random corruption never produces anything but a header or a GGUFError", async function () {
            this.timeout(60000);
            const good = validFile();
            let state = 12345;
            const rnd = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
            let refused = 0;
            for (let i = 0; i < 300; i++) {
                const b = Buffer.from(good);
                const flips = 1 + Math.floor(rnd() * 4);
                for (let k = 0; k < flips; k++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
                const p = await file("fuzz.gguf", b);
                try {
                    const h = await readGGUF(p);
                    expect(h.version === 2 || h.version === 3).to.equal(true);
                } catch (err) {
                    expect(err, String(err)).to.be.instanceOf(GGUFError);
                    refused++;
                }
            }
            expect(refused).to.be.greaterThan(0);
        });
    });
});

describe("checkPhi2", function () {
    let tiny: GGUFHeader;

    before(async function () {
        this.timeout(120000);
        tiny = await readGGUF(await tinyModel("f32"));
    });

    /** A copy of the header with one KV replaced (or removed when `entry` is undefined). */
    function withKV(h: GGUFHeader, key: string, entry: GGUFKV | undefined): GGUFHeader {
        const kvs = h.kv.filter((e) => e.key !== key);
        if (entry) kvs.push(entry);
        const metadata = Object.fromEntries(kvs.map((e) => [e.key, e.value])) as GGUFHeader["metadata"];
        return { ...h, kv: kvs, metadata };
    }

    it("accepts our tiny test model and reports its hyperparameters", () => {
        expect(checkPhi2(tiny)).to.deep.include({
            blockCount: 2, embeddingLength: 256, headCount: 4, headDim: 64, ropeDimensionCount: 32, vocabSize: 51200,
            feedForwardLength: 1024, contextLength: 2048,
        });
    });

    it("refuses other architectures with ERR_UNSUPPORTED_ARCHITECTURE, naming the architecture", async () => {
        const e = expectSyncGGUFError(() => checkPhi2(withKV(tiny, "general.architecture", kv.str("general.architecture", "llama"))),
            `"llama"`, "only \"phi2\"");
        expect(e.code).to.equal("ERR_UNSUPPORTED_ARCHITECTURE");
        const m = expectSyncGGUFError(() => checkPhi2(withKV(tiny, "general.architecture", undefined)), "general.architecture", "missing");
        expect(m.code).to.equal("ERR_UNSUPPORTED_ARCHITECTURE");
        // llama.cpp's real GPT-2 vocab file: arch gpt2, no tensors
        let err: unknown;
        try { await readAndCheckPhi2(gpt2VocabPath()); } catch (x) { err = x; }
        expect(err).to.be.instanceOf(GGUFError);
        expect((err as GGUFError).code).to.equal("ERR_UNSUPPORTED_ARCHITECTURE");
        expect((err as Error).message).to.include(`"gpt2"`);
    });

    it("refuses a vocab-only file", () => {
        expectSyncGGUFError(() => checkPhi2({ ...tiny, tensors: [] }), "no tensors", "vocab-only");
    });

    it("refuses bad hyperparameters (block_count 0 and 100000, wrong types, heads, rope dims)", () => {
        const set = (e: GGUFKV) => withKV(tiny, e.key, e);
        expectSyncGGUFError(() => checkPhi2(set(kv.u32("phi2.block_count", 0))), "phi2.block_count", "is 0", "1..512");
        expectSyncGGUFError(() => checkPhi2(set(kv.u32("phi2.block_count", 100000))), "phi2.block_count", "100000");
        expectSyncGGUFError(() => checkPhi2(set(kv.i32("phi2.block_count", 2))), "phi2.block_count", "must be a uint32", "int32");
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "phi2.embedding_length", undefined)), "phi2.embedding_length", "missing");
        expectSyncGGUFError(() => checkPhi2(set(kv.u32("phi2.attention.head_count", 3))), "head_count", "does not divide");
        expectSyncGGUFError(() => checkPhi2(set(kv.u32("phi2.attention.head_count_kv", 3))), "head_count_kv", "is 3");
        expectSyncGGUFError(() => checkPhi2(set(kv.u32("phi2.rope.dimension_count", 128))), "rope.dimension_count", "128", "head dimension");
        expectSyncGGUFError(() => checkPhi2(set(kv.u32("phi2.context_length", 0))), "context_length", "must be > 0");
        expectSyncGGUFError(() => checkPhi2(set(kv.f64("phi2.attention.layer_norm_epsilon", 1e-5))), "layer_norm_epsilon", "float32");
        expectSyncGGUFError(() => checkPhi2(set(kv.u32("phi2.expert_count", 8))), "expert_count", "dense");
        expectSyncGGUFError(() => checkPhi2(set(kv.str("phi2.rope.scaling.type", "weird"))), "rope.scaling.type", "weird");
    });

    it("refuses vocabulary problems llama.cpp would abort or fail on", () => {
        const tokens = (tiny.metadata["tokenizer.ggml.tokens"] as string[]).slice();
        const dup = tokens.slice();
        dup[1000] = dup[999]!;
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.tokens", kv.strArr("tokenizer.ggml.tokens", dup))),
            "duplicate token", "ids 999 and 1000");
        const emptyDup = tokens.slice();
        emptyDup[5] = "";
        emptyDup[6] = "[EMPTY_5]";
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.tokens", kv.strArr("tokenizer.ggml.tokens", emptyDup))),
            "duplicate token \"[EMPTY_5]\"");
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.model", kv.str("tokenizer.ggml.model", "llama"))),
            "tokenizer.ggml.model", "gpt2");
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.tokens", undefined)), "tokenizer.ggml.tokens", "missing");
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.token_type",
            kv.i32Arr("tokenizer.ggml.token_type", new Int32Array(100)))), "token_type", "100 entries", "51200 tokens");
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.merges", kv.strArr("tokenizer.ggml.merges", ["Ġ t", "nospace"]))),
            "merges'[1]", "nospace");
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.merges", undefined)), "merges", "missing");
        expectSyncGGUFError(() => checkPhi2(withKV(tiny, "tokenizer.ggml.eos_token_id", kv.u32("tokenizer.ggml.eos_token_id", 51200))),
            "eos_token_id", "51200", "only 51200 tokens");
        // fewer tokens than embedding rows
        const types = tiny.metadata["tokenizer.ggml.token_type"] as Int32Array;
        const gpt2Only = withKV(withKV(tiny, "tokenizer.ggml.tokens", kv.strArr("tokenizer.ggml.tokens", tokens.slice(0, 50257))),
            "tokenizer.ggml.token_type", kv.i32Arr("tokenizer.ggml.token_type", types.slice(0, 50257)));
        expectSyncGGUFError(() => checkPhi2(gpt2Only), "vocab count ≠ embedding rows", "50257 tokens", "51200 rows");
    });

    it("refuses missing, misshapen, mistyped, duplicate and unexpected tensors", () => {
        const drop = (name: string) => ({ ...tiny, tensors: tiny.tensors.filter((t) => t.name !== name) });
        const map = (name: string, f: (t: GGUFHeader["tensors"][number]) => object) =>
            ({ ...tiny, tensors: tiny.tensors.map((t) => (t.name === name ? { ...t, ...f(t) } : t)) });
        expectSyncGGUFError(() => checkPhi2(drop("blk.1.ffn_down.bias")), "'blk.1.ffn_down.bias' is missing");
        expectSyncGGUFError(() => checkPhi2(drop("output.weight")), "'output.weight' is missing");
        expectSyncGGUFError(() => checkPhi2(map("blk.0.attn_qkv.weight", () => ({ dims: [256, 512] }))),
            "'blk.0.attn_qkv.weight' has shape [256, 512]", "[256, 768]");
        expectSyncGGUFError(() => checkPhi2(map("output_norm.weight", () => ({ type: GGMLType.F16 }))), "output_norm.weight", "must be F32");
        expectSyncGGUFError(() => checkPhi2(map("blk.0.ffn_up.weight", () => ({ type: GGMLType.I32 }))), "ffn_up.weight", "I32", "not a weight type");
        expectSyncGGUFError(() => checkPhi2({ ...tiny, tensors: [...tiny.tensors, tiny.tensors[3]!] }), "appears twice");
        expectSyncGGUFError(() => checkPhi2({ ...tiny, tensors: [...tiny.tensors, { ...tiny.tensors[1]!, name: "blk.2.attn_norm.weight" }] }),
            "unexpected tensor 'blk.2.attn_norm.weight'");
        // separate q/k/v is accepted when complete
        const E = 256;
        const qkvFree = tiny.tensors.filter((t) => !t.name.includes("attn_qkv"));
        const sep = (i: number) => ["q", "k", "v"].flatMap((x) => [
            { name: `blk.${i}.attn_${x}.weight`, dims: [E, E], type: 0, offset: 0, byteSize: 0 },
            { name: `blk.${i}.attn_${x}.bias`, dims: [E], type: 0, offset: 0, byteSize: 0 },
        ]);
        expect(() => checkPhi2({ ...tiny, tensors: [...qkvFree, ...sep(0), ...sep(1)] })).to.not.throw();
        expectSyncGGUFError(() => checkPhi2({ ...tiny, tensors: [...qkvFree, ...sep(0)] }), "'blk.1.attn_q.weight' is missing");
    });

    it("inspectGGUF summarises a model", async () => {
        const { summary } = await inspectGGUF(tiny.path);
        expect(summary).to.deep.include({
            architecture: "phi2", name: "phi2-test-tiny", contextLength: 2048, embeddingLength: 256, layers: 2, heads: 4,
            vocabSize: 51200, fileType: "F32", fileTypeId: 0, tensorCount: 25, phi2Problem: null,
        });
        const vocab = await inspectGGUF(gpt2VocabPath());
        expect(vocab.summary.architecture).to.equal("gpt2");
        expect(vocab.summary.tensorCount).to.equal(0);
        expect(vocab.summary.phi2Problem).to.include("only \"phi2\"");
    });

    it("a block_count 0 file on disk is refused before any native code sees it", async () => {
        const dir = await mkdtemp(join(tmpdir(), "phi-gguf-bc0-"));
        try {
            await mkdir(dir, { recursive: true });
            const p = join(dir, "bc0.gguf");
            const metadata = tiny.kv.map((e) => (e.key === "phi2.block_count" ? kv.u32("phi2.block_count", 0) : e));
            await writeGGUF(p, { metadata, tensors: [{ name: "token_embd.weight", dims: [32, 4], type: GGMLType.F32, data: new Float32Array(128) }] });
            await expectGGUFError(readAndCheckPhi2(p), "phi2.block_count", "is 0");
        } finally {
            await rm(dir, { recursive: true, force: true });
        }
    });
});
