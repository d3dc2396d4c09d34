/** A real PhiServer on 127.0.0.1, port 0, over a tiny test model, for the server tests. */
import { once } from "node:events";
import fs from "node:fs";
import { PhiServer, type GenerationEvent, type PhiServerOptions } from "../../src/server/index.js";
import { tinyModel } from "./models.js";

export interface TestServer {
    server: PhiServer;
    url: string;
    logs: string[];
}

/** Starts a server on the tiny f32 model (unless `modelPath` says otherwise) and waits for the model. */
export async function startServer(options: Partial<PhiServerOptions> = {}, { waitReady = true } = {}): Promise<TestServer> {
    const logs: string[] = [];
    const modelPath = options.modelPath ?? (await tinyModel("f32"));
    const server = await PhiServer.start({
        host: "127.0.0.1", port: 0, log: (l) => logs.push(l), ...options, modelPath,
        load: { threads: 1, contextSize: 512, ...options.load },
    });
    if (waitReady) await server.ready;
    return { server, url: server.url, logs };
}

/** The next generation the server finishes that `match` accepts. */
export async function nextGeneration(server: PhiServer, match: (e: GenerationEvent) => boolean = () => true): Promise<GenerationEvent> {
    for (;;) {
        const [e] = (await once(server.events, "generation")) as [GenerationEvent];
        if (match(e)) return e;
    }
}

/** A copy of a GGUF with extra metadata (e.g. a tokenizer.chat_template), written to `out`. */
export async function withMetadata(src: string, out: string, extra: import("../../src/gguf/types.js").GGUFKV[]): Promise<string> {
    const { readGGUF } = await import("../../src/gguf/reader.js");
    const { writeGGUF } = await import("../../src/gguf/writer.js");
    const header = await readGGUF(src);
    const fh = await fs.promises.open(src, "r");
    try {
        const tensors = [];
        for (const t of header.tensors) {
            const data = new Uint8Array(t.byteSize);
            await fh.read(data, 0, t.byteSize, header.dataOffset + t.offset);
            tensors.push({ name: t.name, dims: t.dims, type: t.type, data });
        }
        const keys = new Set(extra.map((e) => e.key));
        await writeGGUF(out, { metadata: [...header.kv.filter((e) => !keys.has(e.key)), ...extra], tensors });
    } finally {
        await fh.close();
    }
    return out;
}
