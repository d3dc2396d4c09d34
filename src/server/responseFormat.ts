/**
 * The one seam between a request's structured-output field and generate()'s options: OpenAI's
 * `response_format` and Ollama's `format` both come here (Ollama's as the OpenAI shape). Until PhiModel has
 * grammar-constrained decoding, JSON output is refused with 400 not_supported; when it lands, this function
 * returns the generate() options that constrain the output, and no route changes.
 */
import type { GenerateOptions } from "../model/types.js";
import { invalidValue, notSupported } from "./errors.js";

export type ResponseFormat =
    | { type: "text" }
    | { type: "json_object" }
    | { type: "json_schema"; json_schema?: { name?: string; schema?: unknown; strict?: boolean | null } };

/** Options that make generate() produce `format` (`param`: the request field, for the error). */
export function responseFormatOptions(format: unknown, param = "response_format"): Partial<GenerateOptions> {
    if (format === undefined || format === null) return {};
    const type = (format as { type?: unknown }).type;
    if (type === "text") return {};
    if (type === "json_object" || type === "json_schema") {
        throw notSupported(param, `"${param}" asks for ${type === "json_object" ? "JSON" : "JSON-schema"} output, which this server cannot enforce yet (no constrained decoding); leave "${param}" out or use { "type": "text" }`);
    }
    throw invalidValue(`${param}.type`, `"${param}.type" is ${JSON.stringify(type)}; allowed: "text", "json_object" or "json_schema"`);
}

/** Ollama's `format` ("json", or a JSON schema object) as a ResponseFormat. */
export function ollamaFormat(format: unknown): ResponseFormat | undefined {
    if (format === undefined || format === null || format === "") return undefined;
    if (format === "json") return { type: "json_object" };
    if (typeof format === "object" && !Array.isArray(format)) return { type: "json_schema", json_schema: { schema: format } };
    throw invalidValue("format", `"format" is ${JSON.stringify(format)}; allowed: "json" or a JSON schema object`);
}
