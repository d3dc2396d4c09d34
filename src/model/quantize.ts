/** Quantize a GGUF with llama.cpp's own quantizer (llama_model_quantize), off the event loop. */
import fs from "node:fs";
import { randomBytes } from "node:crypto";
import { AbortError, OutputPathError, PhiAgentError, PhiRangeError, PhiTypeError } from "../errors.js";
import { QUANT_TYPES, isQuantType, type QuantType } from "../gguf/types.js";
import { readAndCheckPhi2 } from "../gguf/validate.js";
import { defaultThreads, ensureLibrary, loadBinding } from "../native/binding.js";
import { checkOption } from "./options.js";
import { checkOutputPath } from "./outputPath.js";

/** The quantizer's targets (tag -> llama_ftype), from the one file-type table in src/gguf/types.ts. */
export { QUANT_TYPES, isQuantType, type QuantType };

export interface QuantizeOptions {
    type: QuantType;
    threads?: number;
    /** Checked before the native quantizer starts (llama.cpp's quantizer cannot be interrupted once running). */
    signal?: AbortSignal;
    /** Replace `outputPath` when it exists (default false: OutputPathError ERR_OUTPUT_EXISTS). The input is never replaced. */
    overwrite?: boolean;
}

export async function quantizeModel(inputPath: string, outputPath: string, options: QuantizeOptions): Promise<void> {
    if (typeof inputPath !== "string" || !inputPath) throw new PhiTypeError(`Expected "inputPath" to be a GGUF path, got ${String(inputPath)}`);
    if (typeof outputPath !== "string" || !outputPath) throw new PhiTypeError(`Expected "outputPath" to be a file path, got ${String(outputPath)}`);
    if (typeof options !== "object" || options === null) throw new PhiTypeError(`quantizeModel() expects an options object such as { type: "q4_k_m" }, got ${String(options)}`);
    if (!isQuantType(options.type)) {
        throw new PhiRangeError(`Expected "type" to be one of ${Object.keys(QUANT_TYPES).join(", ")}, got ${JSON.stringify(String(options.type))}`);
    }
    // Output first, before any work: its folder exists, it is not a folder, not the input, not replaced unasked.
    checkOutputPath(outputPath, { inputs: [inputPath], overwrite: options.overwrite === true });
    const threads = options.threads === undefined ? defaultThreads() : checkOption("threads", options.threads);
    await readAndCheckPhi2(inputPath); // llama.cpp's quantizer must never see a file it would abort on
    if (options.signal?.aborted) throw AbortError.fromSignal("Quantization was aborted before it started", options.signal);
    const binding = loadBinding();
    ensureLibrary("cpu");
    const tmp = `${outputPath}.partial-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
        fs.closeSync(fs.openSync(tmp, "wx")); // can we write there at all? (llama.cpp's own error would be an iostream one)
    } catch (err) {
        throw new OutputPathError("ERR_INVALID_OUTPUT", `Cannot write ${outputPath}: ${(err as Error).message}`, outputPath);
    }
    try {
        await binding.quantize(inputPath, tmp, QUANT_TYPES[options.type], threads);
        fs.renameSync(tmp, outputPath);
    } catch (err) {
        fs.rmSync(tmp, { force: true });
        const e = err as Error & { code?: string };
        throw new PhiAgentError("ERR_QUANTIZE_FAILED", e.message, { cause: err });
    }
}
