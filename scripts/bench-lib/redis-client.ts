/**
 * bench-redis's RusticAI-side client: publishes requests as RusticAI's Python Redis store does (`SET msg:… EX` +
 * `ZADD` in a pipeline, then `PUBLISH`, the same JSON) and waits for each reply on the channel, as a Python
 * guild's ProbeAgent would.
 *
 * Run as a worker (`node dist/scripts/bench-lib/redis-client.js '<job json>'`), it is that guild: another process,
 * so the agent's process does only the agent's work, as it does in a real guild. It reports "@@result
 * {ready:true}" once subscribed, then runs one batch per line of JSON on stdin (`{ requests, payload }`, one
 * request at a time) and answers each with "@@result { ms: [...] }", the time from publishing a request to its
 * reply (client clock).
 */
import readline from "node:readline";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { SystemFormats } from "../../src/guild/rustic/protocol.js";
import { GenerationPromptRequest } from "../../src/messages/formats.js";
import { GemstoneIdGenerator, gemstoneParts, parseWireMessage, readWireMessage, serializeWireMessage } from "../../src/messages/wire/index.js";
import { readJob, reportResult } from "./common.js";

export const BENCH_PROMPT = "The benefits of multi-agent systems include";

const REQUEST_TEMPLATE = JSON.stringify({
    sender: { id: "probe", name: "Probe" }, topics: "default_topic", recipient_list: [], payload: { generation_prompt: BENCH_PROMPT },
    format: GenerationPromptRequest.format, in_response_to: null, thread: [1], conversation_id: null, forward_header: null,
    routing_slip: null, message_history: [], ttl: null, is_error_message: false, traceparent: null, session_state: null,
    topic_published_to: "default_topic", enrich_with_history: 0, process_status: null, origin_guild_stack: [], id: 1, priority: 4, timestamp: 0.0,
});

/** A Python-like client: publishes request JSON as RusticAI's Redis store does and waits for the reply on the channel. */
export class PyClient {
    readonly #ids = new GemstoneIdGenerator(1);
    readonly #waits = new Map<bigint, (t: number) => void>();
    private constructor(readonly redis: Redis, readonly sub: Redis, readonly guild: string) {}

    static async open(url: string, guild: string, topics: string[]): Promise<PyClient> {
        const redis = new Redis(url, { lazyConnect: true });
        const sub = new Redis(url, { lazyConnect: true });
        await redis.connect();
        await sub.connect();
        const c = new PyClient(redis, sub, guild);
        c.sub.on("message", (_ch: string, text: string) => {
            const r = parseWireMessage(text);
            if (!r.ok || r.message.in_response_to === null || r.message.format === SystemFormats.HEARTBEAT) return;
            const w = c.#waits.get(r.message.in_response_to);
            if (w) { c.#waits.delete(r.message.in_response_to); w(performance.now()); }
        });
        await c.sub.subscribe(...topics.map((t) => `${guild}:${t}`));
        return c;
    }

    /** Publishes one request (SET msg EX + ZADD pipeline, PUBLISH); resolves with the ms until its reply came. */
    async request(payload: Record<string, unknown>): Promise<number> {
        const m = readWireMessage(REQUEST_TEMPLATE);
        const id = this.#ids.next();
        const json = serializeWireMessage({ ...m, id, thread: [id], payload: payload as never });
        const t0 = performance.now();
        const replied = new Promise<number>((resolve) => this.#waits.set(id, resolve));
        const ns = `${this.guild}:default_topic`;
        await this.redis.pipeline().set(`msg:${this.guild}:${id}`, json, "EX", 3600).zadd(ns, gemstoneParts(id).timestamp, json).exec();
        await this.redis.publish(ns, json);
        return (await replied) - t0;
    }

    close(): void {
        this.redis.disconnect();
        this.sub.disconnect();
    }
}

export interface RedisClientJob {
    url: string;
    guild: string;
    topics: string[];
}

export interface RedisClientBatch {
    requests: number;
    payload: Record<string, unknown>;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
    const job = readJob<RedisClientJob>();
    const client = await PyClient.open(job.url, job.guild, job.topics);
    reportResult({ ready: true });
    for await (const line of readline.createInterface({ input: process.stdin })) {
        if (!line.trim()) continue;
        const batch = JSON.parse(line) as RedisClientBatch;
        const ms: number[] = [];
        for (let i = 0; i < batch.requests; i++) ms.push(await client.request(batch.payload));
        reportResult({ ms });
    }
    client.close();
}
