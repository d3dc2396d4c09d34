/**
 * llm-phi-agent/server: `phi-agent serve` as a library. A separate entry point, so that importing the package
 * root never loads fastify.
 *
 *     import { PhiServer } from "llm-phi-agent/server";
 *     const server = await PhiServer.start({ modelPath: "models/phi-2.Q4_K_M.gguf", port: 8080 });
 *     await server.ready;            // the model is loaded (GET /health answers 503 until then)
 *     ...
 *     await server.close();          // graceful: in-flight responses finish (bounded), then the model is freed
 */
export { PhiServer, SERVER_DEFAULTS, exposureWarning, type PhiServerOptions, type GenerationEvent } from "./PhiServer.js";
export { ApiError, type ApiErrorType } from "./errors.js";
export { responseFormatOptions, type ResponseFormat } from "./responseFormat.js";
