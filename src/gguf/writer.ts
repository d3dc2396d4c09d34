/**
 * A streaming GGUF v3 writer.
 *
 * The header (metadata + tensor infos) is built in memory (a few MiB at most), tensor data is streamed:
 * a tensor's data may be a Float32Array, raw bytes, or a producer callback that emits Float32Array chunks,
 * so multi-GB models are written without holding them in memory. The writer encodes F32, F16 and Q8_0 itself
 * (Q8_0 exactly like ggml's quantize_row_q8_0_ref); other types must be given as raw bytes.
 */
import { open, rm, type FileHandle } from "node:fs/promises";
import { GGUFError } from "../errors.js";
import {
    GGML_MAX_DIMS, GGML_MAX_NAME, GGMLType, GGUF_DEFAULT_ALIGNMENT, GGUFValueType, ggmlTypeName, ggmlTypeTraits,
    ggufValueTypeName, type GGUFKV, type GGUFNestedArray,
} from "./types.js";

/** Emits the next values of a tensor (row-major in ggml order, dims[0] fastest). */
export type EmitValues = (values: Float32Array) => Promise<void>;

export type GGUFTensorData =
    /** float values, encoded to the tensor's type (F32, F16 or Q8_0) */
    | Float32Array
    /** raw bytes already in the tensor's type, exactly its byte size (any ggml type) */
    | Uint8Array
    /** a producer that emits the float values in chunks (F32, F16 or Q8_0); chunk sizes are free */
    | ((emit: EmitValues) => Promise<void>);

export interface GGUFTensorSpec {
    readonly name: string;
    /** ggml order: dims[0] is the row length. */
    readonly dims: readonly number[];
    /** ggml type id (GGMLType). */
    readonly type: number;
    readonly data: GGUFTensorData;
}

export interface GGUFWriteSpec {
    readonly metadata: readonly GGUFKV[];
    readonly tensors: readonly GGUFTensorSpec[];
}

export type GGUFWriteProgress = (fraction: number, label: string) => void;

export interface GGUFWriteResult {
    readonly path: string;
    readonly bytes: number;
    readonly dataOffset: number;
}

/** Convenience constructors for typed KV entries. */
export const kv = {
    u8: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.UINT8, value }),
    i8: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.INT8, value }),
    u16: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.UINT16, value }),
    i16: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.INT16, value }),
    u32: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.UINT32, value }),
    i32: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.INT32, value }),
    f32: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.FLOAT32, value }),
    bool: (key: string, value: boolean): GGUFKV => ({ key, type: GGUFValueType.BOOL, value }),
    str: (key: string, value: string): GGUFKV => ({ key, type: GGUFValueType.STRING, value }),
    u64: (key: string, value: bigint | number): GGUFKV => ({ key, type: GGUFValueType.UINT64, value }),
    i64: (key: string, value: bigint | number): GGUFKV => ({ key, type: GGUFValueType.INT64, value }),
    f64: (key: string, value: number): GGUFKV => ({ key, type: GGUFValueType.FLOAT64, value }),
    arr: (key: string, arrayType: GGUFValueType, value: GGUFKV["value"]): GGUFKV =>
        ({ key, type: GGUFValueType.ARRAY, arrayType, value }),
    strArr: (key: string, value: readonly string[]): GGUFKV =>
        ({ key, type: GGUFValueType.ARRAY, arrayType: GGUFValueType.STRING, value: value as string[] }),
    i32Arr: (key: string, value: Int32Array | readonly number[]): GGUFKV =>
        ({ key, type: GGUFValueType.ARRAY, arrayType: GGUFValueType.INT32, value }),
    f32Arr: (key: string, value: Float32Array | readonly number[]): GGUFKV =>
        ({ key, type: GGUFValueType.ARRAY, arrayType: GGUFValueType.FLOAT32, value }),
};

// ---------------------------------------------------------------------------------------------------------------
// float conversions

/** float32 -> IEEE half bits, round to nearest even (same results as ggml's FP32_TO_FP16). */
export function f32ToF16Bits(f: number): number {
    F32_SCRATCH[0] = f;
    return f32BitsToF16(U32_SCRATCH[0]!);
}
const F32_SCRATCH = new Float32Array(1);
const U32_SCRATCH = new Uint32Array(F32_SCRATCH.buffer);

function f32BitsToF16(x: number): number {
    const sign = (x >>> 16) & 0x8000;
    const e = (x >>> 23) & 0xff;
    let m = x & 0x7fffff;
    if (e === 0xff) return sign | 0x7c00 | (m !== 0 ? 0x200 : 0);
    const ne = e - 112; // e - 127 + 15
    if (ne >= 0x1f) return sign | 0x7c00;
    if (ne <= 0) {
        if (ne < -10) return sign;
        m |= 0x800000;
        const shift = 14 - ne;
        let h = m >>> shift;
        const rem = m & ((1 << shift) - 1);
        const half = 1 << (shift - 1);
        if (rem > half || (rem === half && (h & 1) !== 0)) h++;
        return sign | h;
    }
    let h = (ne << 10) | (m >>> 13);
    const rem = m & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++;
    return sign | h;
}

/** Encodes `src` as little-endian f16 into `dst` at byte offset `at`. */
export function encodeF16(src: Float32Array, dst: Uint8Array, at = 0): void {
    const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
    for (let i = 0, o = at; i < bits.length; i++, o += 2) {
        const h = f32BitsToF16(bits[i]!);
        dst[o] = h & 0xff;
        dst[o + 1] = h >>> 8;
    }
}

/** Encodes `src` (length multiple of 32) as Q8_0 blocks into `dst` at byte offset `at` (ggml quantize_row_q8_0_ref). */
export function encodeQ8_0(src: Float32Array, dst: Uint8Array, at = 0): void {
    const nb = src.length >>> 5;
    const fr = Math.fround;
    const q8 = new Int8Array(dst.buffer, dst.byteOffset, dst.byteLength);
    const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
    for (let b = 0; b < nb; b++) {
        const i0 = b << 5;
        // |x| as bits: for non-NaN floats the integer order is the float order (NaN is ignored, like ggml's MAX)
        let am = 0;
        for (let j = 0; j < 32; j++) {
            const u = bits[i0 + j]! & 0x7fffffff;
            if (u > am && u <= 0x7f800000) am = u;
        }
        U32_SCRATCH[0] = am;
        const amax = F32_SCRATCH[0]!;
        const d = fr(amax / 127);
        const id = d !== 0 ? fr(1 / d) : 0;
        const h = f32ToF16Bits(d);
        const o = at + b * 34;
        dst[o] = h & 0xff;
        dst[o + 1] = h >>> 8;
        const qo = o + 2;
        for (let j = 0; j < 32; j++) {
            const x = fr(src[i0 + j]! * id);
            // roundf: half away from zero (exact: x is a float32, the sum is computed in double)
            q8[qo + j] = Math.trunc(x < 0 ? x - 0.5 : x + 0.5);
        }
    }
}

function encodeValues(type: number, src: Float32Array, dst: Uint8Array): number {
    switch (type) {
        case GGMLType.F32: {
            const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
            if (LITTLE_ENDIAN_HOST) dst.set(bytes);
            else {
                const dv = new DataView(dst.buffer, dst.byteOffset, src.byteLength);
                for (let i = 0; i < src.length; i++) dv.setFloat32(i * 4, src[i]!, true);
            }
            return src.byteLength;
        }
        case GGMLType.F16:
            encodeF16(src, dst);
            return src.length * 2;
        case GGMLType.Q8_0:
            encodeQ8_0(src, dst);
            return (src.length / 32) * 34;
        default:
            throw new Error(`unreachable: ${type}`);
    }
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const ENCODABLE = new Set<number>([GGMLType.F32, GGMLType.F16, GGMLType.Q8_0]);

// ---------------------------------------------------------------------------------------------------------------
// header encoding

class ByteSink {
    private chunks: Buffer[] = [];
    private cur = Buffer.alloc(1 << 16);
    private at = 0;
    length = 0;

    private room(n: number): void {
        if (this.at + n <= this.cur.length) return;
        this.chunks.push(this.cur.subarray(0, this.at));
        this.cur = Buffer.alloc(Math.max(1 << 16, n));
        this.at = 0;
    }
    u8(v: number): void { this.room(1); this.cur.writeUInt8(v, this.at); this.at += 1; this.length += 1; }
    i8(v: number): void { this.room(1); this.cur.writeInt8(v, this.at); this.at += 1; this.length += 1; }
    u16(v: number): void { this.room(2); this.cur.writeUInt16LE(v, this.at); this.at += 2; this.length += 2; }
    i16(v: number): void { this.room(2); this.cur.writeInt16LE(v, this.at); this.at += 2; this.length += 2; }
    u32(v: number): void { this.room(4); this.cur.writeUInt32LE(v, this.at); this.at += 4; this.length += 4; }
    i32(v: number): void { this.room(4); this.cur.writeInt32LE(v, this.at); this.at += 4; this.length += 4; }
    f32(v: number): void { this.room(4); this.cur.writeFloatLE(v, this.at); this.at += 4; this.length += 4; }
    f64(v: number): void { this.room(8); this.cur.writeDoubleLE(v, this.at); this.at += 8; this.length += 8; }
    u64(v: bigint): void { this.room(8); this.cur.writeBigUInt64LE(v, this.at); this.at += 8; this.length += 8; }
    i64(v: bigint): void { this.room(8); this.cur.writeBigInt64LE(v, this.at); this.at += 8; this.length += 8; }
    bytes(b: Uint8Array): void {
        this.room(b.length);
        this.cur.set(b, this.at);
        this.at += b.length;
        this.length += b.length;
    }
    str(s: string): void {
        const b = Buffer.from(s, "utf8");
        this.u64(BigInt(b.length));
        this.bytes(b);
    }
    zeros(n: number): void { this.bytes(new Uint8Array(n)); }
    finish(): Buffer {
        this.chunks.push(this.cur.subarray(0, this.at));
        return Buffer.concat(this.chunks);
    }
}

const INT_RANGES: Partial<Record<GGUFValueType, [number, number]>> = {
    [GGUFValueType.UINT8]: [0, 0xff],
    [GGUFValueType.INT8]: [-0x80, 0x7f],
    [GGUFValueType.UINT16]: [0, 0xffff],
    [GGUFValueType.INT16]: [-0x8000, 0x7fff],
    [GGUFValueType.UINT32]: [0, 0xffffffff],
    [GGUFValueType.INT32]: [-0x80000000, 0x7fffffff],
};

function bad(what: string, msg: string): never {
    throw new GGUFError(`metadata '${what}': ${msg}`);
}

function writeScalar(s: ByteSink, type: GGUFValueType, v: unknown, what: string): void {
    const range = INT_RANGES[type];
    if (range) {
        if (typeof v !== "number" || !Number.isInteger(v) || v < range[0] || v > range[1]) {
            bad(what, `${String(v)} is not a valid ${ggufValueTypeName(type)}`);
        }
    }
    switch (type) {
        case GGUFValueType.UINT8: s.u8(v as number); return;
        case GGUFValueType.INT8: s.i8(v as number); return;
        case GGUFValueType.UINT16: s.u16(v as number); return;
        case GGUFValueType.INT16: s.i16(v as number); return;
        case GGUFValueType.UINT32: s.u32(v as number); return;
        case GGUFValueType.INT32: s.i32(v as number); return;
        case GGUFValueType.FLOAT32:
        case GGUFValueType.FLOAT64:
            if (typeof v !== "number") bad(what, `${String(v)} is not a number`);
            if (type === GGUFValueType.FLOAT32) s.f32(v); else s.f64(v);
            return;
        case GGUFValueType.BOOL:
            if (typeof v !== "boolean") bad(what, `${String(v)} is not a boolean`);
            s.u8(v ? 1 : 0);
            return;
        case GGUFValueType.STRING:
            if (typeof v !== "string") bad(what, `${String(v)} is not a string`);
            s.str(v);
            return;
        case GGUFValueType.UINT64:
        case GGUFValueType.INT64: {
            let b: bigint;
            if (typeof v === "bigint") b = v;
            else if (typeof v === "number" && Number.isSafeInteger(v)) b = BigInt(v);
            else bad(what, `${String(v)} is not a valid ${ggufValueTypeName(type)}`);
            const ok = type === GGUFValueType.UINT64 ? b >= 0n && b < 1n << 64n : b >= -(1n << 63n) && b < 1n << 63n;
            if (!ok) bad(what, `${b} is out of range for ${ggufValueTypeName(type)}`);
            if (type === GGUFValueType.UINT64) s.u64(b); else s.i64(b);
            return;
        }
        default:
            bad(what, `value type ${type} cannot be written as a scalar`);
    }
}

function isNested(v: unknown): v is GGUFNestedArray {
    return typeof v === "object" && v !== null && Array.isArray((v as GGUFNestedArray).nested);
}

function writeArray(s: ByteSink, arrayType: GGUFValueType, v: unknown, what: string, depth: number): void {
    if (!(arrayType >= 0 && arrayType <= 12)) bad(what, `array element type ${arrayType} is not a GGUF value type`);
    if (depth > 16) bad(what, "arrays nested too deep");
    s.u32(arrayType);
    if (arrayType === GGUFValueType.ARRAY) {
        if (!isNested(v)) bad(what, "an array of arrays must be given as { nested: [{ type, value }, ...] }");
        s.u64(BigInt(v.nested.length));
        v.nested.forEach((item, i) => writeArray(s, item.type, item.value, `${what}[${i}]`, depth + 1));
        return;
    }
    if (!(ArrayBuffer.isView(v) || Array.isArray(v))) bad(what, `array value must be an array or typed array`);
    const arr = v as ArrayLike<unknown>;
    s.u64(BigInt(arr.length));
    for (let i = 0; i < arr.length; i++) writeScalar(s, arrayType, arr[i], `${what}[${i}]`);
}

function validateTensor(t: GGUFTensorSpec, i: number): { nElem: number; byteSize: number } {
    const label = `tensor #${i} '${t.name}'`;
    if (typeof t.name !== "string" || t.name.length === 0) throw new GGUFError(`tensor #${i} has no name`);
    if (Buffer.byteLength(t.name, "utf8") >= GGML_MAX_NAME) {
        throw new GGUFError(`${label}: name longer than ${GGML_MAX_NAME - 1} bytes`);
    }
    if (!Array.isArray(t.dims) || t.dims.length < 1 || t.dims.length > GGML_MAX_DIMS) {
        throw new GGUFError(`${label}: dims must have 1..${GGML_MAX_DIMS} entries`);
    }
    let nElem = 1;
    for (const d of t.dims) {
        if (!Number.isSafeInteger(d) || d < 1) throw new GGUFError(`${label}: dim ${d} is not a positive integer`);
        nElem *= d;
    }
    if (!Number.isSafeInteger(nElem)) throw new GGUFError(`${label}: too many elements`);
    const tr = ggmlTypeTraits(t.type);
    if (!tr) throw new GGUFError(`${label}: type id ${t.type} is not a ggml type`);
    if (t.dims[0]! % tr.blockSize !== 0) {
        throw new GGUFError(`${label}: row length ${t.dims[0]} is not a multiple of the ${tr.name} block size ${tr.blockSize}`);
    }
    const byteSize = (nElem / tr.blockSize) * tr.typeSize;
    if (t.data instanceof Uint8Array) {
        if (t.data.length !== byteSize) {
            throw new GGUFError(`${label}: raw data is ${t.data.length} bytes, ${tr.name} [${t.dims.join(", ")}] needs ${byteSize}`);
        }
    } else {
        if (!ENCODABLE.has(t.type)) {
            throw new GGUFError(`${label}: the writer cannot encode ${ggmlTypeName(t.type)} from floats (F32, F16, Q8_0 only); pass raw bytes`);
        }
        if (t.data instanceof Float32Array && t.data.length !== nElem) {
            throw new GGUFError(`${label}: ${t.data.length} values given, [${t.dims.join(", ")}] has ${nElem}`);
        }
        if (!(t.data instanceof Float32Array) && typeof t.data !== "function") {
            throw new GGUFError(`${label}: data must be a Float32Array, a Uint8Array or a producer function`);
        }
    }
    return { nElem, byteSize };
}

function pad(n: number, a: number): number {
    return Math.ceil(n / a) * a;
}

/** Writes a complete GGUF v3 file. On failure the partial file is removed. */
export async function writeGGUF(path: string, spec: GGUFWriteSpec, onProgress?: GGUFWriteProgress): Promise<GGUFWriteResult> {
    // --- validate + build the header in memory
    const keys = new Set<string>();
    let alignment = GGUF_DEFAULT_ALIGNMENT;
    const head = new ByteSink();
    head.bytes(Buffer.from("GGUF", "latin1"));
    head.u32(3);
    head.u64(BigInt(spec.tensors.length));
    head.u64(BigInt(spec.metadata.length));
    for (const e of spec.metadata) {
        if (typeof e.key !== "string" || e.key.length === 0) throw new GGUFError(`metadata: empty key`);
        if (keys.has(e.key)) throw new GGUFError(`metadata '${e.key}': duplicate key`);
        keys.add(e.key);
        if (e.key === "general.alignment") {
            const a = e.value as number;
            if (e.type !== GGUFValueType.UINT32 || typeof a !== "number" || a <= 0 || (a & (a - 1)) !== 0) {
                throw new GGUFError(`metadata 'general.alignment' must be a uint32 power of two`);
            }
            alignment = a;
        }
        head.str(e.key);
        head.u32(e.type);
        if (e.type === GGUFValueType.ARRAY) {
            if (e.arrayType === undefined) bad(e.key, "array entry without arrayType");
            writeArray(head, e.arrayType, e.value, e.key, 0);
        } else {
            writeScalar(head, e.type, e.value, e.key);
        }
    }
    const names = new Set<string>();
    const sizes: { nElem: number; byteSize: number; offset: number }[] = [];
    let dataSize = 0;
    spec.tensors.forEach((t, i) => {
        if (names.has(t.name)) throw new GGUFError(`tensor #${i} '${t.name}': duplicate tensor name`);
        names.add(t.name);
        const { nElem, byteSize } = validateTensor(t, i);
        sizes.push({ nElem, byteSize, offset: dataSize });
        head.str(t.name);
        head.u32(t.dims.length);
        for (const d of t.dims) head.u64(BigInt(d));
        head.u32(t.type);
        head.u64(BigInt(dataSize));
        dataSize += pad(byteSize, alignment);
    });
    const headerLen = head.length;
    const dataOffset = spec.tensors.length > 0 ? pad(headerLen, alignment) : headerLen;
    head.zeros(dataOffset - headerLen);
    const header = head.finish();

    const total = dataOffset + dataSize;
    let fh: FileHandle | undefined;
    let written = 0;
    let lastReport = -1;
    const report = (label: string, force = false) => {
        if (!onProgress) return;
        const f = total === 0 ? 1 : written / total;
        if (force || f - lastReport >= 0.002) {
            lastReport = f;
            onProgress(f, label);
        }
    };
    const writeAll = async (b: Uint8Array) => {
        let o = 0;
        while (o < b.length) {
            const { bytesWritten } = await fh!.write(b, o, b.length - o, written);
            o += bytesWritten;
            written += bytesWritten;
        }
    };

    try {
        fh = await open(path, "w");
        await writeAll(header);
        report("header", true);
        const zeros = new Uint8Array(alignment);
        for (let i = 0; i < spec.tensors.length; i++) {
            const t = spec.tensors[i]!;
            const { nElem, byteSize } = sizes[i]!;
            const label = t.name;
            if (t.data instanceof Uint8Array) {
                for (let o = 0; o < t.data.length; o += 1 << 24) {
                    await writeAll(t.data.subarray(o, Math.min(t.data.length, o + (1 << 24))));
                    report(label);
                }
            } else {
                await streamValues(t, nElem, writeAll, () => report(label));
            }
            const padBytes = pad(byteSize, alignment) - byteSize;
            if (padBytes > 0) await writeAll(zeros.subarray(0, padBytes));
        }
        if (written !== total) throw new GGUFError(`internal error: wrote ${written} bytes, expected ${total}`, path);
        await fh.close();
        fh = undefined;
        report("done", true);
        return { path, bytes: total, dataOffset };
    } catch (err) {
        if (fh) await fh.close().catch(() => undefined);
        await rm(path, { force: true }).catch(() => undefined);
        throw err;
    }
}

async function streamValues(
    t: GGUFTensorSpec, nElem: number, writeAll: (b: Uint8Array) => Promise<void>, tick: () => void,
): Promise<void> {
    const label = `tensor '${t.name}'`;
    const block = t.type === GGMLType.Q8_0 ? 32 : 1;
    const carry = new Float32Array(32);
    let carryLen = 0;
    let count = 0;
    let out = new Uint8Array(0);

    const encodeAndWrite = async (vals: Float32Array) => {
        const need = t.type === GGMLType.F32 ? vals.length * 4 : t.type === GGMLType.F16 ? vals.length * 2 : (vals.length / 32) * 34;
        if (out.length < need) out = new Uint8Array(need);
        const n = encodeValues(t.type, vals, out);
        await writeAll(out.subarray(0, n));
        tick();
    };

    const emit: EmitValues = async (values) => {
        if (!(values instanceof Float32Array)) throw new GGUFError(`${label}: producer emitted something other than a Float32Array`);
        if (count + values.length > nElem) {
            throw new GGUFError(`${label}: producer emitted more than the ${nElem} values of [${t.dims.join(", ")}]`);
        }
        count += values.length;
        let v = values;
        if (carryLen > 0) {
            const take = Math.min(block - carryLen, v.length);
            carry.set(v.subarray(0, take), carryLen);
            carryLen += take;
            v = v.subarray(take);
            if (carryLen < block) return;
            await encodeAndWrite(carry.subarray(0, block));
            carryLen = 0;
        }
        const whole = v.length - (v.length % block);
        // encode in bounded slices so the scratch buffer stays small
        const slice = 1 << 22;
        for (let o = 0; o < whole; o += slice) await encodeAndWrite(v.subarray(o, Math.min(whole, o + slice)));
        if (whole < v.length) {
            carry.set(v.subarray(whole), 0);
            carryLen = v.length - whole;
        }
    };

    if (t.data instanceof Float32Array) await emit(t.data);
    else await (t.data as (emit: EmitValues) => Promise<void>)(emit);
    if (count !== nElem || carryLen !== 0) {
        throw new GGUFError(`${label}: producer emitted ${count} values, [${t.dims.join(", ")}] needs ${nElem}`);
    }
}
