/**
 * llama.cpp-style utilities: GET /health (503 while the model loads or the server shuts down, 200 when ready),
 * GET /metrics (Prometheus text), POST /tokenize, POST /detokenize.
 */
import type { FastifyInstance } from "fastify";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { DetokenizeBody, TokenizeBody } from "./schemas.js";
import type { ServerContext } from "./context.js";

export function registerUtilityRoutes(app: FastifyInstance, ctx: ServerContext): void {
    const f = app.withTypeProvider<TypeBoxTypeProvider>();
    const core = ctx.core;

    f.get("/health", async () => {
        core.readyModel(); // 503 model_loading / model_unavailable / shutting_down
        return { status: "ok" };
    });

    f.get("/metrics", async (_request, reply) => {
        const registry = core.metrics.registry;
        return reply.type(registry.contentType).send(await registry.metrics());
    });

    f.post("/tokenize", { schema: { body: TokenizeBody } }, async (request) => {
        const model = core.readyModel();
        const { content, parse_special, with_pieces } = request.body;
        const tokens = model.tokenize(content, { special: parse_special === true });
        if (with_pieces !== true) return { tokens };
        return { tokens: tokens.map((id) => ({ id, piece: model.detokenize([id], { special: true }) })) };
    });

    f.post("/detokenize", { schema: { body: DetokenizeBody } }, async (request) => {
        const model = core.readyModel();
        return { content: model.detokenize(request.body.tokens) };
    });
}
