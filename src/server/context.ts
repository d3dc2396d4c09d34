/** What the routes of one server share: the serving core, the model's names and facts, the chat formatter. */
import type { GGUFSummary } from "../gguf/validate.js";
import { ApiError } from "./errors.js";
import type { ChatFormatter } from "./chat.js";
import { errorBody, type ServingCore } from "./generation.js";

export interface ServerContext {
    core: ServingCore;
    /** The model's id in /v1/models and its name in /api/tags. */
    modelId: string;
    /** Unix seconds: when the server started (the model's `created`). */
    created: number;
    /** OpenAI's system_fingerprint: this package and its version. */
    fingerprint: string;
    version: string;
    chat: ChatFormatter;
    /** The GGUF's header facts (for /api/show and /api/tags). */
    summary: GGUFSummary;
    /** The raw `tokenizer.chat_template`, when the GGUF has one. */
    chatTemplate: string | undefined;
    /** The model file's size and modification time. */
    file: { size: number; modified: Date; digest: string };
    /** max_tokens of /v1/completions when the request has none (OpenAI's default is 16). */
    completionDefaultMaxTokens: number;
    /** Throws 404 model_not_found unless `name` names the served model. */
    checkModel(name: string, param: string): void;
    errorBody: typeof errorBody;
}

/** The names a request may use for the model: its id, and Ollama's `id:latest`. */
export function modelNameChecker(id: string): (name: string, param: string) => void {
    const names = new Set([id, `${id}:latest`]);
    return (name, param) => {
        if (!names.has(name)) {
            throw new ApiError(404, "model_not_found", `The model "${name}" does not exist on this server; it serves "${id}" (GET /v1/models)`, { param });
        }
    };
}
