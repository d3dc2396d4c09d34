export * from "./types.js";
export { readGGUF, readTensorF32, dequantize, f16ToF32, metaNumber, metaString, openModelFile, type ReadGGUFOptions } from "./reader.js";
export {
    writeGGUF, kv, encodeF16, encodeQ8_0, f32ToF16Bits,
    type GGUFTensorSpec, type GGUFTensorData, type GGUFWriteSpec, type GGUFWriteProgress, type GGUFWriteResult, type EmitValues,
} from "./writer.js";
export {
    checkPhi2, inspectGGUF, summarizeGGUF, readAndCheckPhi2, LLAMA_MAX_LAYERS, type GGUFSummary, type Phi2HParams,
} from "./validate.js";
