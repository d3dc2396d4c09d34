/**
 * GGUF types shared by the reader, the validator and the writer.
 *
 * Format reference: ggml's gguf.h / gguf.cpp (GGUF v2/v3, little-endian). The ggml tensor-type table
 * (block size, bytes per block) is taken from ggml.c `type_traits` of the llama.cpp release we ship with.
 */

/** GGUF metadata value types (gguf.h `enum gguf_type`). */
export enum GGUFValueType {
    UINT8 = 0,
    INT8 = 1,
    UINT16 = 2,
    INT16 = 3,
    UINT32 = 4,
    INT32 = 5,
    FLOAT32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    UINT64 = 10,
    INT64 = 11,
    FLOAT64 = 12,
}

export const GGUF_VALUE_TYPE_NAMES: Readonly<Record<number, string>> = {
    0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
    7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64",
};

export function ggufValueTypeName(t: number): string {
    return GGUF_VALUE_TYPE_NAMES[t] ?? `unknown(${t})`;
}

/** One element of a nested array (an array whose items are arrays): the inner array with its element type. */
export interface GGUFTypedArrayValue {
    readonly type: GGUFValueType;
    readonly value: GGUFArrayValue;
}

/** An array of arrays (GGUF allows nesting; llama.cpp itself does not read such keys). */
export interface GGUFNestedArray {
    readonly nested: readonly GGUFTypedArrayValue[];
}

/**
 * Array values. Numeric arrays are typed arrays (64-bit integer arrays are BigInt64Array/BigUint64Array),
 * bool arrays are boolean[], string arrays are string[] (decoded as UTF-8), nested arrays are GGUFNestedArray.
 */
export type GGUFArrayValue =
    | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array
    | Float32Array | Float64Array | BigUint64Array | BigInt64Array
    | boolean[] | string[] | GGUFNestedArray;

/** Scalars: 8..32-bit ints and floats are numbers, 64-bit ints are bigint, bool is boolean, string is string. */
export type GGUFValue = number | bigint | boolean | string | GGUFArrayValue;

/** A typed key/value pair, as stored in the file (and as the writer takes it). */
export interface GGUFKV {
    readonly key: string;
    readonly type: GGUFValueType;
    /** Element type when `type` is ARRAY. */
    readonly arrayType?: GGUFValueType;
    /**
     * The value. For the writer, arrays of numbers may also be given as number[] (or bigint[] for 64-bit types);
     * the reader always returns typed arrays.
     */
    readonly value: GGUFValue | readonly number[] | readonly bigint[];
}

/** ggml tensor types (ggml.h `enum ggml_type`). Only ids with a block layout are listed. */
export enum GGMLType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

export interface GGMLTypeTraits {
    readonly id: number;
    readonly name: string;
    /** Elements per block (ggml `blck_size`). */
    readonly blockSize: number;
    /** Bytes per block (ggml `type_size`). */
    readonly typeSize: number;
}

/** ggml type_traits: id -> (name, blck_size, type_size). Ids 4, 5, 31-33, 36-38 were removed from ggml. */
const TRAITS: readonly GGMLTypeTraits[] = [
    { id: 0, name: "F32", blockSize: 1, typeSize: 4 },
    { id: 1, name: "F16", blockSize: 1, typeSize: 2 },
    { id: 2, name: "Q4_0", blockSize: 32, typeSize: 18 },
    { id: 3, name: "Q4_1", blockSize: 32, typeSize: 20 },
    { id: 6, name: "Q5_0", blockSize: 32, typeSize: 22 },
    { id: 7, name: "Q5_1", blockSize: 32, typeSize: 24 },
    { id: 8, name: "Q8_0", blockSize: 32, typeSize: 34 },
    { id: 9, name: "Q8_1", blockSize: 32, typeSize: 36 },
    { id: 10, name: "Q2_K", blockSize: 256, typeSize: 84 },
    { id: 11, name: "Q3_K", blockSize: 256, typeSize: 110 },
    { id: 12, name: "Q4_K", blockSize: 256, typeSize: 144 },
    { id: 13, name: "Q5_K", blockSize: 256, typeSize: 176 },
    { id: 14, name: "Q6_K", blockSize: 256, typeSize: 210 },
    { id: 15, name: "Q8_K", blockSize: 256, typeSize: 292 },
    { id: 16, name: "IQ2_XXS", blockSize: 256, typeSize: 66 },
    { id: 17, name: "IQ2_XS", blockSize: 256, typeSize: 74 },
    { id: 18, name: "IQ3_XXS", blockSize: 256, typeSize: 98 },
    { id: 19, name: "IQ1_S", blockSize: 256, typeSize: 50 },
    { id: 20, name: "IQ4_NL", blockSize: 32, typeSize: 18 },
    { id: 21, name: "IQ3_S", blockSize: 256, typeSize: 110 },
    { id: 22, name: "IQ2_S", blockSize: 256, typeSize: 82 },
    { id: 23, name: "IQ4_XS", blockSize: 256, typeSize: 136 },
    { id: 24, name: "I8", blockSize: 1, typeSize: 1 },
    { id: 25, name: "I16", blockSize: 1, typeSize: 2 },
    { id: 26, name: "I32", blockSize: 1, typeSize: 4 },
    { id: 27, name: "I64", blockSize: 1, typeSize: 8 },
    { id: 28, name: "F64", blockSize: 1, typeSize: 8 },
    { id: 29, name: "IQ1_M", blockSize: 256, typeSize: 56 },
    { id: 30, name: "BF16", blockSize: 1, typeSize: 2 },
    { id: 34, name: "TQ1_0", blockSize: 256, typeSize: 54 },
    { id: 35, name: "TQ2_0", blockSize: 256, typeSize: 66 },
    { id: 39, name: "MXFP4", blockSize: 32, typeSize: 17 },
    { id: 40, name: "NVFP4", blockSize: 64, typeSize: 36 },
    { id: 41, name: "Q1_0", blockSize: 128, typeSize: 18 },
    { id: 42, name: "Q2_0", blockSize: 64, typeSize: 18 },
];

const TRAITS_BY_ID: ReadonlyMap<number, GGMLTypeTraits> = new Map(TRAITS.map((t) => [t.id, t]));

/** The traits of a ggml type id, or undefined when the id is not a (still supported) ggml type. */
export function ggmlTypeTraits(id: number): GGMLTypeTraits | undefined {
    return TRAITS_BY_ID.get(id);
}

export function ggmlTypeName(id: number): string {
    return TRAITS_BY_ID.get(id)?.name ?? `unknown(${id})`;
}

/** Byte size of a tensor of this type and shape. Throws RangeError when the row length is not a whole number of blocks. */
export function ggmlTensorByteSize(type: number, dims: readonly number[]): number {
    const tr = TRAITS_BY_ID.get(type);
    if (!tr) throw new RangeError(`type id ${type} is not a ggml type`);
    const ne0 = dims[0] ?? 1;
    if (ne0 % tr.blockSize !== 0) {
        throw new RangeError(`row length ${ne0} is not a multiple of the ${tr.name} block size ${tr.blockSize}`);
    }
    let rows = 1;
    for (let i = 1; i < dims.length; i++) rows *= dims[i]!;
    return (ne0 / tr.blockSize) * tr.typeSize * rows;
}

/**
 * llama.cpp's file types (llama.h `enum llama_ftype`, `general.file_type`): the one table of them. Each row: the id,
 * the LLAMA_FTYPE_* name, and whether `quantizeModel` offers it as a target (llama_model_quantize makes it without
 * an importance matrix). The lower-case name is the short tag (ModelInfo.quantization, QUANT_TYPES' keys).
 */
const LLAMA_FILE_TYPE_ROWS = [
    [0, "F32", true], [1, "F16", true], [2, "Q4_0", true], [3, "Q4_1", true], [7, "Q8_0", true], [8, "Q5_0", true],
    [9, "Q5_1", true], [10, "Q2_K", true], [11, "Q3_K_S", true], [12, "Q3_K_M", true], [13, "Q3_K_L", true],
    [14, "Q4_K_S", true], [15, "Q4_K_M", true], [16, "Q5_K_S", true], [17, "Q5_K_M", true], [18, "Q6_K", true],
    [19, "IQ2_XXS", false], [20, "IQ2_XS", false], [21, "Q2_K_S", false], [22, "IQ3_XS", false], [23, "IQ3_XXS", false],
    [24, "IQ1_S", false], [25, "IQ4_NL", false], [26, "IQ3_S", false], [27, "IQ3_M", false], [28, "IQ2_S", false],
    [29, "IQ2_M", false], [30, "IQ4_XS", false], [31, "IQ1_M", false], [32, "BF16", true], [36, "TQ1_0", false],
    [37, "TQ2_0", false], [38, "MXFP4_MOE", false], [39, "NVFP4", false], [40, "Q1_0", false], [41, "Q2_0", false],
    [1024, "GUESSED", false],
] as const satisfies readonly (readonly [number, string, boolean])[];

type FileTypeRow = (typeof LLAMA_FILE_TYPE_ROWS)[number];
/** A file type llama.cpp's quantizer can write here (the short tag: "q4_k_m", "q8_0", "f16", ...). */
export type QuantType = Lowercase<Extract<FileTypeRow, readonly [number, string, true]>[1]>;

/** id -> LLAMA_FTYPE_* name, e.g. 15 -> "Q4_K_M". */
export const LLAMA_FILE_TYPE_NAMES: Readonly<Record<number, string>> = Object.freeze(
    Object.fromEntries(LLAMA_FILE_TYPE_ROWS.map(([id, name]) => [id, name])));

/** The quantizer's targets: tag -> llama_ftype id. A null-prototype object: only its own keys are types. */
export const QUANT_TYPES: Readonly<Record<QuantType, number>> = Object.freeze(Object.assign(Object.create(null) as Record<QuantType, number>,
    Object.fromEntries(LLAMA_FILE_TYPE_ROWS.filter((r) => r[2]).map(([id, name]) => [name.toLowerCase(), id]))));

/** Whether `value` is a key of QUANT_TYPES (own keys only: "toString" or "__proto__" are not types). */
export function isQuantType(value: unknown): value is QuantType {
    return typeof value === "string" && Object.hasOwn(QUANT_TYPES, value);
}

/** The short tag of a file type id ("q4_k_m"), or `ftype<id>` for an id llama.cpp does not name. */
export function fileTypeTag(id: number): string {
    const name = Object.hasOwn(LLAMA_FILE_TYPE_NAMES, id) ? LLAMA_FILE_TYPE_NAMES[id] : undefined;
    return name !== undefined ? name.toLowerCase() : `ftype${id}`;
}

/** llama.cpp token types (llama.h `enum llama_token_type`). */
export enum LlamaTokenType {
    UNDEFINED = 0,
    NORMAL = 1,
    UNKNOWN = 2,
    CONTROL = 3,
    USER_DEFINED = 4,
    UNUSED = 5,
    BYTE = 6,
}

export interface GGUFTensorInfo {
    readonly name: string;
    /** ggml order: dims[0] is the row length (ne0), dims[1] the number of rows, ... */
    readonly dims: number[];
    /** ggml type id (see GGMLType). */
    readonly type: number;
    /** Byte offset of the data relative to the start of the data section (`header.dataOffset`). */
    readonly offset: number;
    /** Size of the data in bytes, from the type's block size and bytes per block. */
    readonly byteSize: number;
}

export interface GGUFHeader {
    readonly path: string;
    readonly version: number;
    readonly fileSize: number;
    readonly alignment: number;
    /** Absolute file offset of the data section (aligned). */
    readonly dataOffset: number;
    /** key -> value (typed arrays for numeric arrays). */
    readonly metadata: Record<string, GGUFValue>;
    /** The same key/value pairs with their GGUF types, in file order. */
    readonly kv: GGUFKV[];
    readonly tensors: GGUFTensorInfo[];
}

/** The maximum tensor name length ggml accepts (GGML_MAX_NAME is 64 including the terminating NUL). */
export const GGML_MAX_NAME = 64;
/** ggml tensors have at most 4 dimensions. */
export const GGML_MAX_DIMS = 4;
export const GGUF_DEFAULT_ALIGNMENT = 32;
export const GGUF_MAGIC = "GGUF";
