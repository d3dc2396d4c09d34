/**
 * A defensive GGUF (v2/v3, little-endian) header reader.
 *
 * Hostile input must never crash, hang or make us allocate absurd amounts of memory: the file is read in
 * bounded chunks through a FileHandle, every count and length is checked against the bytes left in the file
 * (and against `maxHeaderBytes`) before anything is allocated, and every problem is a GGUFError whose message
 * names the section/field and the offending value.
 */
import { open, stat, type FileHandle } from "node:fs/promises";
import { GGUFError, PhiAgentError } from "../errors.js";
import {
    GGML_MAX_DIMS, GGML_MAX_NAME, GGUF_DEFAULT_ALIGNMENT, GGUFValueType, ggmlTypeName, ggmlTypeTraits,
    ggufValueTypeName,
    type GGUFArrayValue, type GGUFHeader, type GGUFKV, type GGUFTensorInfo, type GGUFTypedArrayValue, type GGUFValue,
} from "./types.js";

export interface ReadGGUFOptions {
    /**
     * Refuse files whose header (magic + metadata + tensor infos) is larger than this many bytes.
     * Real models have headers of a few MiB; default 256 MiB.
     */
    maxHeaderBytes?: number;
}

const DEFAULT_MAX_HEADER_BYTES = 256 * 1024 * 1024;
const CHUNK = 1 << 20;
const MAX_NESTING = 16;
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Smallest encoded size of one value of each type (strings: the u64 length; arrays: type + count). */
function minValueSize(t: GGUFValueType): number {
    switch (t) {
        case GGUFValueType.UINT8: case GGUFValueType.INT8: case GGUFValueType.BOOL: return 1;
        case GGUFValueType.UINT16: case GGUFValueType.INT16: return 2;
        case GGUFValueType.UINT32: case GGUFValueType.INT32: case GGUFValueType.FLOAT32: return 4;
        case GGUFValueType.UINT64: case GGUFValueType.INT64: case GGUFValueType.FLOAT64: return 8;
        case GGUFValueType.STRING: return 8;
        case GGUFValueType.ARRAY: return 12;
    }
}

function isValueType(t: number): t is GGUFValueType {
    return Number.isInteger(t) && t >= 0 && t <= 12;
}

const utf8 = new TextDecoder("utf-8", { fatal: false });

function describeMagic(b: Uint8Array): string {
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(" ");
    const txt = Array.from(b, (x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : ".")).join("");
    return `magic ${JSON.stringify(txt)} = ${hex || "<none>"}, expected "GGUF" = 47 47 55 46`;
}

/** Bounded, buffered reader over a FileHandle. All reads are checked against the file size. */
class BoundedReader {
    private buf: Buffer = Buffer.alloc(CHUNK);
    private bufStart = 0; // file offset of buf[0]
    private bufLen = 0;
    pos = 0;

    constructor(
        private readonly fh: FileHandle,
        readonly fileSize: number,
        private readonly path: string,
        private readonly limit: number,
    ) {}

    remaining(): number {
        return this.fileSize - this.pos;
    }

    fail(msg: string): never {
        throw new GGUFError(msg, this.path);
    }

    /** Makes sure bytes [pos, pos+n) are in the buffer (n <= CHUNK). */
    private async ensure(n: number, what: string): Promise<void> {
        if (n > this.fileSize - this.pos) {
            this.fail(`truncated file: ${what} needs ${n} bytes at offset ${this.pos} but the file ends at ${this.fileSize}`);
        }
        if (this.pos + n > this.limit) {
            this.fail(`header too large: ${what} at offset ${this.pos} goes past the ${this.limit}-byte limit for GGUF metadata`);
        }
        if (this.pos >= this.bufStart && this.pos + n <= this.bufStart + this.bufLen) return;
        const want = Math.min(CHUNK, this.fileSize - this.pos);
        let got = 0;
        while (got < want) {
            const { bytesRead } = await this.fh.read(this.buf, got, want - got, this.pos + got);
            if (bytesRead === 0) break;
            got += bytesRead;
        }
        this.bufStart = this.pos;
        this.bufLen = got;
        if (got < n) this.fail(`truncated file: ${what} at offset ${this.pos}: the file shrank while being read`);
    }

    private at(): number {
        return this.pos - this.bufStart;
    }

    async u32(what: string): Promise<number> {
        await this.ensure(4, what);
        const v = this.buf.readUInt32LE(this.at());
        this.pos += 4;
        return v;
    }

    async u64(what: string): Promise<bigint> {
        await this.ensure(8, what);
        const v = this.buf.readBigUInt64LE(this.at());
        this.pos += 8;
        return v;
    }

    /** A u64 count/length that must fit in the remaining bytes given a minimum size per item. */
    async count(what: string, minItemSize: number): Promise<number> {
        const n = await this.u64(what);
        const fileRoom = Math.max(0, this.fileSize - this.pos);
        const limitRoom = Math.max(0, this.limit - this.pos);
        const need = n * BigInt(minItemSize);
        if (n > MAX_SAFE || need > BigInt(fileRoom)) {
            this.fail(`${what} is ${n}, but only ${fileRoom} bytes remain in the file (each item needs at least ${minItemSize})`);
        }
        if (need > BigInt(limitRoom)) {
            this.fail(`header too large: ${what} is ${n}, which would need at least ${need} bytes, past the ${this.limit}-byte limit for GGUF metadata`);
        }
        return Number(n);
    }

    /** Reads exactly `n` bytes (bounded by the file size and header limit) into a fresh Uint8Array. */
    async bytes(n: number, what: string): Promise<Uint8Array> {
        if (n <= CHUNK) {
            await this.ensure(n, what);
            const out = new Uint8Array(n);
            out.set(this.buf.subarray(this.at(), this.at() + n));
            this.pos += n;
            return out;
        }
        if (n > this.fileSize - this.pos) {
            this.fail(`truncated file: ${what} needs ${n} bytes at offset ${this.pos} but the file ends at ${this.fileSize}`);
        }
        if (this.pos + n > this.limit) {
            this.fail(`header too large: ${what} at offset ${this.pos} (${n} bytes) goes past the ${this.limit}-byte limit for GGUF metadata`);
        }
        const out = new Uint8Array(n);
        let got = 0;
        while (got < n) {
            const { bytesRead } = await this.fh.read(out, got, n - got, this.pos + got);
            if (bytesRead === 0) this.fail(`truncated file: ${what} at offset ${this.pos}: the file shrank while being read`);
            got += bytesRead;
        }
        this.pos += n;
        return out;
    }

    async string(what: string): Promise<string> {
        const len = await this.u64(`${what} length`);
        const room = this.fileSize - this.pos;
        if (len > BigInt(room)) {
            this.fail(`${what}: string length ${len} is larger than the ${room} bytes left in the file`);
        }
        const n = Number(len);
        if (n <= CHUNK) {
            await this.ensure(n, what);
            const s = n === 0 ? "" : decodeString(this.buf, this.at(), n);
            this.pos += n;
            return s;
        }
        return utf8.decode(await this.bytes(n, what));
    }

    /**
     * Reads strings `out[i..n)` of a string array: synchronously while each one lies wholly in the buffered chunk
     * (the vocabulary's 51200 tokens and 50000 merges would otherwise cost one await each), through string() for
     * the one that crosses a chunk boundary or is unusual. Returns the next index to read.
     */
    async stringsInto(out: string[], i: number, n: number, what: string): Promise<number> {
        await this.ensure(Math.min(8, this.fileSize - this.pos), `${what}[${i}] length`);
        const buf = this.buf;
        const end = Math.min(this.bufStart + this.bufLen, this.limit); // file offset the fast path must stay below
        while (i < n) {
            const at = this.pos - this.bufStart;
            if (this.pos + 8 > end) break;
            const len = buf.readUInt32LE(at);
            if (buf.readUInt32LE(at + 4) !== 0 || this.pos + 8 + len > end) break;
            out[i++] = len === 0 ? "" : decodeString(buf, at + 8, len);
            this.pos += 8 + len;
        }
        if (i < n) {
            out[i] = await this.string(`${what}[${i}]`);
            i++;
        }
        return i;
    }
}

function decodeString(buf: Buffer, start: number, n: number): string {
    // ASCII fast path (most keys and many tokens).
    if (n < 64) {
        let ascii = true;
        for (let i = 0; i < n; i++) if (buf[start + i]! >= 0x80) { ascii = false; break; }
        if (ascii) return buf.toString("latin1", start, start + n);
    }
    return utf8.decode(buf.subarray(start, start + n));
}

function typedFromBytes(type: GGUFValueType, bytes: Uint8Array, n: number): GGUFArrayValue {
    const ab = bytes.buffer as ArrayBuffer;
    if (LITTLE_ENDIAN_HOST) {
        switch (type) {
            case GGUFValueType.UINT8: return bytes;
            case GGUFValueType.INT8: return new Int8Array(ab, 0, n);
            case GGUFValueType.UINT16: return new Uint16Array(ab, 0, n);
            case GGUFValueType.INT16: return new Int16Array(ab, 0, n);
            case GGUFValueType.UINT32: return new Uint32Array(ab, 0, n);
            case GGUFValueType.INT32: return new Int32Array(ab, 0, n);
            case GGUFValueType.FLOAT32: return new Float32Array(ab, 0, n);
            case GGUFValueType.UINT64: return new BigUint64Array(ab, 0, n);
            case GGUFValueType.INT64: return new BigInt64Array(ab, 0, n);
            case GGUFValueType.FLOAT64: return new Float64Array(ab, 0, n);
        }
    }
    const dv = new DataView(ab);
    switch (type) {
        case GGUFValueType.UINT8: return bytes;
        case GGUFValueType.INT8: return new Int8Array(ab, 0, n);
        case GGUFValueType.UINT16: return Uint16Array.from({ length: n }, (_, i) => dv.getUint16(i * 2, true));
        case GGUFValueType.INT16: return Int16Array.from({ length: n }, (_, i) => dv.getInt16(i * 2, true));
        case GGUFValueType.UINT32: return Uint32Array.from({ length: n }, (_, i) => dv.getUint32(i * 4, true));
        case GGUFValueType.INT32: return Int32Array.from({ length: n }, (_, i) => dv.getInt32(i * 4, true));
        case GGUFValueType.FLOAT32: return Float32Array.from({ length: n }, (_, i) => dv.getFloat32(i * 4, true));
        case GGUFValueType.UINT64: return BigUint64Array.from({ length: n }, (_, i) => dv.getBigUint64(i * 8, true));
        case GGUFValueType.INT64: return BigInt64Array.from({ length: n }, (_, i) => dv.getBigInt64(i * 8, true));
        case GGUFValueType.FLOAT64: return Float64Array.from({ length: n }, (_, i) => dv.getFloat64(i * 8, true));
        default: throw new Error(`unreachable: ${type}`);
    }
}

async function readScalar(r: BoundedReader, type: GGUFValueType, what: string): Promise<GGUFValue> {
    switch (type) {
        case GGUFValueType.STRING:
            return r.string(what);
        case GGUFValueType.BOOL: {
            const b = (await r.bytes(1, what))[0]!;
            if (b > 1) r.fail(`${what}: bool value is ${b}, expected 0 or 1`);
            return b === 1;
        }
        default: {
            const size = minValueSize(type);
            const b = await r.bytes(size, what);
            const dv = new DataView(b.buffer, b.byteOffset, size);
            switch (type) {
                case GGUFValueType.UINT8: return dv.getUint8(0);
                case GGUFValueType.INT8: return dv.getInt8(0);
                case GGUFValueType.UINT16: return dv.getUint16(0, true);
                case GGUFValueType.INT16: return dv.getInt16(0, true);
                case GGUFValueType.UINT32: return dv.getUint32(0, true);
                case GGUFValueType.INT32: return dv.getInt32(0, true);
                case GGUFValueType.FLOAT32: return dv.getFloat32(0, true);
                case GGUFValueType.UINT64: return dv.getBigUint64(0, true);
                case GGUFValueType.INT64: return dv.getBigInt64(0, true);
                case GGUFValueType.FLOAT64: return dv.getFloat64(0, true);
                default: return r.fail(`${what}: unexpected value type ${type}`);
            }
        }
    }
}

async function readArray(r: BoundedReader, what: string, depth: number): Promise<{ type: GGUFValueType; value: GGUFArrayValue }> {
    const t = await r.u32(`${what} array element type`);
    if (!isValueType(t)) r.fail(`${what}: array element type ${t} is not a GGUF value type (0..12)`);
    const n = await r.count(`${what}: array length`, minValueSize(t));
    switch (t) {
        case GGUFValueType.STRING: {
            const out: string[] = new Array(n);
            for (let i = 0; i < n;) i = await r.stringsInto(out, i, n, what);
            return { type: t, value: out };
        }
        case GGUFValueType.BOOL: {
            const b = await r.bytes(n, `${what} (bool array)`);
            const out: boolean[] = new Array(n);
            for (let i = 0; i < n; i++) {
                if (b[i]! > 1) r.fail(`${what}[${i}]: bool value is ${b[i]}, expected 0 or 1`);
                out[i] = b[i] === 1;
            }
            return { type: t, value: out };
        }
        case GGUFValueType.ARRAY: {
            if (depth >= MAX_NESTING) r.fail(`${what}: arrays nested more than ${MAX_NESTING} levels deep`);
            const nested: GGUFTypedArrayValue[] = new Array(n);
            for (let i = 0; i < n; i++) nested[i] = await readArray(r, `${what}[${i}]`, depth + 1);
            return { type: t, value: { nested } };
        }
        default: {
            const size = minValueSize(t);
            const bytes = await r.bytes(n * size, `${what} (${ggufValueTypeName(t)} array of ${n})`);
            return { type: t, value: typedFromBytes(t, bytes, n) };
        }
    }
}

/** Opens `path` for reading, mapping "missing" and "is a directory" to ERR_MODEL_NOT_FOUND. */
export async function openModelFile(path: string): Promise<{ fh: FileHandle; size: number }> {
    if (typeof path !== "string" || path.length === 0) {
        throw new TypeError("GGUF path must be a non-empty string");
    }
    let st;
    try {
        st = await stat(path);
    } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENOTDIR") {
            throw new PhiAgentError("ERR_MODEL_NOT_FOUND",
                `Model file not found: ${path} (pass an existing .gguf file, e.g. --model FILE or PHI2_MODEL=FILE)`,
                { cause: err, details: { path } });
        }
        throw new PhiAgentError("ERR_MODEL_NOT_FOUND", `Cannot access model file ${path}: ${(err as Error).message}`,
            { cause: err, details: { path } });
    }
    if (st.isDirectory()) {
        throw new PhiAgentError("ERR_MODEL_NOT_FOUND", `Model path ${path} is a directory, not a GGUF file`, { details: { path } });
    }
    if (!st.isFile()) {
        throw new PhiAgentError("ERR_MODEL_NOT_FOUND", `Model path ${path} is not a regular file`, { details: { path } });
    }
    let fh: FileHandle;
    try {
        fh = await open(path, "r");
    } catch (err) {
        throw new PhiAgentError("ERR_MODEL_NOT_FOUND", `Cannot open model file ${path}: ${(err as Error).message}`,
            { cause: err, details: { path } });
    }
    return { fh, size: st.size };
}

/**
 * Reads and validates the header of a GGUF file: magic, version, metadata, tensor infos, alignment and the
 * data section offset. Tensor data itself is not read (see readTensorF32).
 */
export async function readGGUF(path: string, options: ReadGGUFOptions = {}): Promise<GGUFHeader> {
    const limit = options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
    const { fh, size } = await openModelFile(path);
    try {
        return await parse(new BoundedReader(fh, size, path, limit), path);
    } finally {
        await fh.close().catch(() => undefined);
    }
}

/**
 * readGGUF through a handle the caller opened (and closes): the header of exactly that open file, whatever
 * happens to its path meanwhile. `path` is for messages.
 */
export async function readGGUFFromHandle(fh: FileHandle, path: string, options: ReadGGUFOptions = {}): Promise<GGUFHeader> {
    const { size } = await fh.stat();
    return parse(new BoundedReader(fh, size, path, options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES), path);
}

async function parse(r: BoundedReader, path: string): Promise<GGUFHeader> {
    const fileSize = r.fileSize;
    if (fileSize === 0) r.fail(`not a GGUF file (magic missing: the file is empty)`);
    if (fileSize < 4) {
        const b = await r.bytes(fileSize, "magic");
        r.fail(`not a GGUF file (${describeMagic(b)}; the file is only ${fileSize} bytes)`);
    }
    const magic = await r.bytes(4, "magic");
    if (magic[0] !== 0x47 || magic[1] !== 0x47 || magic[2] !== 0x55 || magic[3] !== 0x46) {
        r.fail(`not a GGUF file (${describeMagic(magic)})`);
    }

    const version = await r.u32("header version");
    if (version !== 2 && version !== 3) {
        if (version === 1) r.fail(`header version is 1: GGUF v1 is no longer supported (re-convert the model)`);
        if (version !== 0 && (version & 0xffff) === 0) {
            r.fail(`header version is ${version} (0x${version.toString(16)}): this looks like a big-endian GGUF, which is not supported`);
        }
        r.fail(`header version is ${version}, only GGUF versions 2 and 3 are supported`);
    }

    // Each tensor info needs at least: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    const nTensors = await r.count("header n_tensors", 32);
    // Each KV needs at least: key length (8) + type (4) + 1 byte of value.
    const nKV = await r.count("header n_kv", 13);

    const metadata: Record<string, GGUFValue> = Object.create(null);
    const kv: GGUFKV[] = [];
    for (let i = 0; i < nKV; i++) {
        const key = await r.string(`metadata key #${i}`);
        if (key.length === 0) r.fail(`metadata key #${i} is empty`);
        if (Object.prototype.hasOwnProperty.call(metadata, key)) r.fail(`metadata key #${i} '${key}' is duplicated`);
        const type = await r.u32(`metadata '${key}' value type`);
        if (!isValueType(type)) r.fail(`metadata '${key}': value type ${type} is not a GGUF value type (0..12)`);
        if (type === GGUFValueType.ARRAY) {
            const arr = await readArray(r, `metadata '${key}'`, 0);
            metadata[key] = arr.value;
            kv.push({ key, type, arrayType: arr.type, value: arr.value });
        } else {
            const value = await readScalar(r, type, `metadata '${key}'`);
            metadata[key] = value;
            kv.push({ key, type, value });
        }
    }

    let alignment = GGUF_DEFAULT_ALIGNMENT;
    const alignKV = kv.find((e) => e.key === "general.alignment");
    if (alignKV) {
        if (alignKV.type !== GGUFValueType.UINT32) {
            r.fail(`metadata 'general.alignment' must be a uint32 but is a ${ggufValueTypeName(alignKV.type)}`);
        }
        const a = alignKV.value as number;
        if (a === 0 || (a & (a - 1)) !== 0) r.fail(`metadata 'general.alignment' is ${a}, which is not a nonzero power of two`);
        alignment = a;
    }

    const tensors: GGUFTensorInfo[] = [];
    const names = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
        const name = await r.string(`tensor #${i} name`);
        const label = `tensor #${i} '${name}'`;
        if (name.length === 0) r.fail(`tensor #${i} has an empty name`);
        if (Buffer.byteLength(name, "utf8") >= GGML_MAX_NAME) {
            r.fail(`${label}: name is ${Buffer.byteLength(name, "utf8")} bytes, ggml allows at most ${GGML_MAX_NAME - 1}`);
        }
        if (names.has(name)) r.fail(`${label}: duplicate tensor name`);
        names.add(name);
        const nDims = await r.u32(`${label} n_dims`);
        if (nDims < 1 || nDims > GGML_MAX_DIMS) r.fail(`${label}: n_dims is ${nDims}, expected 1..${GGML_MAX_DIMS}`);
        const dims: number[] = [];
        let nElem = 1n;
        for (let d = 0; d < nDims; d++) {
            const ne = await r.u64(`${label} dims[${d}]`);
            if (ne === 0n || ne > MAX_SAFE) r.fail(`${label}: dims[${d}] is ${ne}, expected 1..2^53`);
            nElem *= ne;
            if (nElem > MAX_SAFE) r.fail(`${label}: element count of dims [${[...dims, ne].join(", ")}] overflows 2^53`);
            dims.push(Number(ne));
        }
        const type = await r.u32(`${label} type`);
        const tr = ggmlTypeTraits(type);
        if (!tr) r.fail(`tensor '${name}': type id ${type} is not a ggml type`);
        if (dims[0]! % tr.blockSize !== 0) {
            r.fail(`tensor '${name}': row length dims[0] = ${dims[0]} is not a multiple of the ${tr.name} block size ${tr.blockSize}`);
        }
        const byteSize = Number(nElem / BigInt(tr.blockSize)) * tr.typeSize;
        if (byteSize > fileSize) r.fail(`tensor '${name}': ${tr.name} [${dims.join(", ")}] needs ${byteSize} bytes, more than the whole file (${fileSize})`);
        const off = await r.u64(`${label} offset`);
        if (off > MAX_SAFE) r.fail(`tensor '${name}': data offset ${off} is too large`);
        const offset = Number(off);
        if (offset % alignment !== 0) r.fail(`tensor '${name}': data offset ${offset} is not a multiple of the alignment ${alignment}`);
        tensors.push({ name, dims, type, offset, byteSize });
    }

    const dataOffset = nTensors > 0 ? Math.ceil(r.pos / alignment) * alignment : r.pos;
    if (nTensors > 0 && dataOffset > fileSize) {
        r.fail(`truncated file: the data section would start at offset ${dataOffset} but the file ends at ${fileSize}`);
    }
    const dataSize = fileSize - dataOffset;
    for (const t of tensors) {
        if (t.offset + t.byteSize > dataSize) {
            r.fail(`tensor '${t.name}': data [${t.offset}, ${t.offset + t.byteSize}) relative to the data section at ${dataOffset} ` +
                `runs past the end of the file (${dataSize} data bytes): the file is truncated or the offset is wrong`);
        }
    }
    const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < byOffset.length; i++) {
        const p = byOffset[i - 1]!, c = byOffset[i]!;
        if (c.offset < p.offset + p.byteSize) {
            r.fail(`tensor '${c.name}': data at offset ${c.offset} overlaps tensor '${p.name}' [${p.offset}, ${p.offset + p.byteSize})`);
        }
    }

    return { path, version, fileSize, alignment, dataOffset, metadata, kv, tensors };
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor data

const f16Table = (() => {
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
        const s = h & 0x8000 ? -1 : 1;
        const e = (h >> 10) & 0x1f;
        const m = h & 0x3ff;
        if (e === 0) t[h] = s * m * 2 ** -24;
        else if (e === 31) t[h] = m ? NaN : s * Infinity;
        else t[h] = s * (1 + m / 1024) * 2 ** (e - 15);
    }
    return t;
})();

/** IEEE half (as its 16 bits) to a number. */
export function f16ToF32(h: number): number {
    return f16Table[h & 0xffff]!;
}

/** Dequantizes raw tensor bytes of a supported type (F32, F16, BF16, Q8_0) into a Float32Array of `n` values. */
export function dequantize(type: number, raw: Uint8Array, n: number): Float32Array {
    const out = new Float32Array(n);
    const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    switch (type) {
        case 0: // F32
            if (LITTLE_ENDIAN_HOST && raw.byteOffset % 4 === 0) out.set(new Float32Array(raw.buffer, raw.byteOffset, n));
            else for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
            return out;
        case 1: // F16
            for (let i = 0; i < n; i++) out[i] = f16Table[dv.getUint16(i * 2, true)]!;
            return out;
        case 30: { // BF16
            const u = new Uint32Array(out.buffer);
            for (let i = 0; i < n; i++) u[i] = dv.getUint16(i * 2, true) << 16;
            return out;
        }
        case 8: { // Q8_0: { f16 d; int8 qs[32] }
            const nb = n / 32;
            for (let b = 0; b < nb; b++) {
                const base = b * 34;
                const d = f16Table[dv.getUint16(base, true)]!;
                const o = b * 32;
                for (let j = 0; j < 32; j++) out[o + j] = d * dv.getInt8(base + 2 + j);
            }
            return out;
        }
        default:
            throw new GGUFError(`cannot dequantize ${ggmlTypeName(type)}: only F32, F16, BF16 and Q8_0 are supported`);
    }
}

/**
 * Reads one tensor's data and returns it as float32 (F32, F16, BF16 and Q8_0 tensors).
 * Element order is ggml's: dims[0] varies fastest.
 */
export async function readTensorF32(header: GGUFHeader, name: string): Promise<Float32Array> {
    const t = header.tensors.find((x) => x.name === name);
    if (!t) throw new GGUFError(`tensor '${name}' is not in the file`, header.path);
    if (t.type !== 0 && t.type !== 1 && t.type !== 30 && t.type !== 8) {
        throw new GGUFError(`tensor '${name}' is ${ggmlTypeName(t.type)}: readTensorF32 supports F32, F16, BF16 and Q8_0`, header.path);
    }
    const n = t.dims.reduce((a, b) => a * b, 1);
    const { fh, size } = await openModelFile(header.path);
    try {
        const start = header.dataOffset + t.offset;
        if (start + t.byteSize > size) {
            throw new GGUFError(`tensor '${name}': data [${start}, ${start + t.byteSize}) is past the end of the file (${size} bytes)`, header.path);
        }
        const raw = new Uint8Array(t.byteSize);
        let got = 0;
        while (got < t.byteSize) {
            const { bytesRead } = await fh.read(raw, got, Math.min(t.byteSize - got, 1 << 26), start + got);
            if (bytesRead === 0) throw new GGUFError(`tensor '${name}': the file ended while reading its data`, header.path);
            got += bytesRead;
        }
        try {
            return dequantize(t.type, raw, n);
        } catch (err) {
            if (err instanceof GGUFError) throw new GGUFError(`tensor '${name}': ${err.message}`, header.path);
            throw err;
        }
    } finally {
        await fh.close().catch(() => undefined);
    }
}

/** Metadata helpers: read a number-like value (number or bigint within safe range) or undefined. */
export function metaNumber(header: Pick<GGUFHeader, "metadata">, key: string): number | undefined {
    const v = header.metadata[key];
    if (typeof v === "number") return v;
    if (typeof v === "bigint" && v <= MAX_SAFE && v >= -MAX_SAFE) return Number(v);
    return undefined;
}

export function metaString(header: Pick<GGUFHeader, "metadata">, key: string): string | undefined {
    const v = header.metadata[key];
    return typeof v === "string" ? v : undefined;
}
