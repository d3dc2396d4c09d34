/** Quantize a GGUF with llama.cpp's own quantizer (llama_model_quantize), off the event loop. */
import fs from "node:fs";
import { randomBytes } from "node:crypto";
import { AbortError, OutputPathError, PhiAgentError } from "../errors.js";
import { readAndCheckPhi2 } from "../gguf/validate.js";
import { defaultThreads, ensureLibrary, loadBinding } from "../native/binding.js";
import { checkInteger } from "./options.js";
import { checkOutputPath } from "./outputPath.js";

/** llama_ftype values (llama.h). */
export const QUANT_TYPES = {
    f32: 0, f16: 1, q4_0: 2, q4_1: 3, q8_0: 7, q5_0: 8, q5_1: 9, q2_k: 10, q3_k_m: 12, q4_k_s: 14, q4_k_m: 15,
    q5_k_s: 16, q5_k_m: 17, q6_k: 18, bf16: 32,
} as const;
export type QuantType = keyof typeof QUANT_TYPES;

export interface QuantizeOptions {
    type: QuantType;
    threads?: number;
    /** Checked before the native quantizer starts (llama.cpp's quantizer cannot be interrupted once running). */
    signal?: AbortSignal;
    /** Replace `outputPath` when it exists (default false: OutputPathError ERR_OUTPUT_EXISTS). The input is never replaced. */
    overwrite?: boolean;
}

export async function quantizeModel(inputPath: string, outputPath: string, options: QuantizeOptions): Promise<void> {
    if (typeof inputPath !== "string" || !inputPath) throw new TypeError(`Expected "inputPath" to be a GGUF path, got ${String(inputPath)}`);
    if (typeof outputPath !== "string" || !outputPath) throw new TypeError(`Expected "outputPath" to be a file path, got ${String(outputPath)}`);
    if (typeof options !== "object" || options === null || !(options.type in QUANT_TYPES)) {
        throw new RangeError(`Expected "type" to be one of ${Object.keys(QUANT_TYPES).join(", ")}, got ${String(options?.type)}`);
    }
    // Output first, before any work: its folder exists, it is not a folder, not the input, not replaced unasked.
    checkOutputPath(outputPath, { inputs: [inputPath], overwrite: options.overwrite === true });
    const threads = options.threads === undefined ? defaultThreads() : checkInteger("threads", options.threads, 1, 1024);
    await readAndCheckPhi2(inputPath); // llama.cpp's quantizer must never see a file it would abort on
    if (options.signal?.aborted) throw new AbortError("Quantization was aborted before it started");
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
