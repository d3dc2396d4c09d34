/**
 * The one seam between a request's structured-output field and generate()'s options: OpenAI's
 * `response_format` and Ollama's `format` both come here (Ollama's as the OpenAI shape). JSON output is
 * grammar-constrained decoding (GenerateOptions.jsonSchema): `json_object` is any JSON object, `json_schema` the
 * given schema; a schema our converter cannot enforce is a 400 naming the keyword (from generate()'s own check).
 */
import type { GenerateOptions } from "../model/types.js";
import { invalidValue } from "./errors.js";

export type ResponseFormat =
    | { type: "text" }
    | { type: "json_object" }
    | { type: "json_schema"; json_schema?: { name?: string; schema?: unknown; strict?: boolean | null } };

/** Options that make generate() produce `format` (`param`: the request field, for the error). */
export function responseFormatOptions(format: unknown, param = "response_format"): Partial<GenerateOptions> {
    if (format === undefined || format === null) return {};
    const type = (format as { type?: unknown }).type;
    if (type === "text") return {};
    if (type === "json_object") return { jsonSchema: { type: "object" } };
    if (type === "json_schema") {
        const schema = (format as { json_schema?: { schema?: unknown } | null }).json_schema?.schema;
        if (schema === undefined || schema === null) {
            throw invalidValue(`${param}.json_schema.schema`, `"${param}" of type "json_schema" needs "json_schema.schema": the JSON Schema the output must match`);
        }
        if (typeof schema !== "object" || Array.isArray(schema)) {
            throw invalidValue(`${param}.json_schema.schema`, `"${param}.json_schema.schema" must be a JSON Schema object, got ${Array.isArray(schema) ? "an array" : typeof schema}`);
        }
        return { jsonSchema: schema as Record<string, unknown> };
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
