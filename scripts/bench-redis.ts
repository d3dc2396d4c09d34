/**
 * bench-redis: what joining a RusticAI guild over Redis costs, on a redis-server of its own (loopback) and the tiny
 * test model.
 *
 * 1. Per-request overhead (1 generated token, one request at a time): the in-memory guild (GuildBuilder +
 *    LLMPhiAgent + a client's request()) against our agent host on the Redis backend, asked the way a Python
 *    guild asks, from another process as a Python guild is (bench-lib/redis-client.ts: the request's JSON
 *    SET/ZADD/PUBLISHed, the reply read off the channel and parsed). The two take turns request by request, so
 *    load on the machine hits both alike. p50/p99 of each and the difference.
 * 2. Replica scaling: 1 and then 2 worker processes (`phi-agent agent`, 1 thread each) answering the same burst
 *    of requests; throughput and its ratio, for short answers (24 tokens) and longer ones (128).
 *
 *   node dist/scripts/bench-redis.js [--requests N] [--rounds N] [--burst N] [--tokens N,...] [--json]
 *   (wrap in `flock "$BENCH_LOCK"` on a shared machine)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { LLMPhiAgent, PhiAgentProps } from "../src/agent/index.js";
import { AgentBuilder, GuildBuilder } from "../src/guild/index.js";
import { AgentHost } from "../src/guild/rustic/AgentHost.js";
import { joinRedisGuild } from "../src/guild/rustic/join.js";
import { SystemFormats } from "../src/guild/rustic/protocol.js";
import { GenerationPromptRequest } from "../src/messages/formats.js";
import { parseWireMessage } from "../src/messages/wire/index.js";
import { ensureTestModel } from "../src/testModel/makeTestModel.js";
import { startRedisServer, type RedisServer } from "../test/helpers/redis.js";
import { cpuSnapshot, fmtMs, repoRoot, startLineWorker, waitForQuiet, type CpuSnapshot } from "./bench-lib/common.js";
import { BENCH_PROMPT, PyClient, type RedisClientBatch, type RedisClientJob } from "./bench-lib/redis-client.js";
import { choiceFlag, intFlag, listFlag, scriptArgs } from "./args.js";

const USAGE = `Usage: node dist/scripts/bench-redis.js [--requests N] [--rounds N] [--burst N] [--tokens N,...] [--only overhead|replicas] [--json]
  --requests  requests per round of the overhead rows (default 50), --rounds rounds of each (default 4)
  --burst     requests of the replica rows (default 96)
  --tokens    tokens generated per burst request, one pair of replica rows per value (default 24,128: short
              answers, where Redis and the JSON weigh most, and answers of the length agents ask for)`;

const opts = scriptArgs("bench-redis", USAGE, {
    requests: { type: "string" }, rounds: { type: "string" }, burst: { type: "string" }, tokens: { type: "string" }, json: { type: "boolean" },
    only: { type: "string" },
}, (v) => ({
    only: choiceFlag("only", v.only, ["overhead", "replicas"] as const),
    requests: intFlag("requests", v.requests, 1) ?? 50,
    rounds: intFlag("rounds", v.rounds, 1) ?? 4,
    burst: intFlag("burst", v.burst, 1) ?? 96,
    tokens: (listFlag("tokens", v.tokens) ?? ["24", "128"]).map((x) => intFlag("tokens", x, 1)!),
    json: v.json === true,
}));

/** Share of the machine's CPU capacity in use between two snapshots (all processes, ours included). */
function busyShare(a: CpuSnapshot | undefined, b: CpuSnapshot | undefined): number {
    if (!a || !b || b.at <= a.at) return NaN;
    return Math.min(1, (b.busyMs - a.busyMs) / ((b.at - a.at) * os.availableParallelism()));
}

async function quiet(what: string): Promise<number> {
    return waitForQuiet(0.3, 60_000, (busy) => process.stderr.write(`${what}: waiting for the machine to calm down (others use ${(busy * 100).toFixed(0)}%)\n`));
}

function pct(xs: number[], p: number): number {
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

async function overhead(server: RedisServer, modelPath: string) {
    const props = { modelPath, device: "cpu" as const, threads: 1, contextSize: 256, maxNewTokens: 1 };
    // the in-memory guild
    const spec = new AgentBuilder(LLMPhiAgent).setId("phi_agent").setName("Phi-2 LLM").setProperties(new PhiAgentProps(props)).buildSpec();
    const guild = await new GuildBuilder("bench_guild").addAgentSpec(spec).launch();
    await guild.agent<LLMPhiAgent>("phi_agent")!.ready();
    const client = guild.client("bench_client");
    // our agent host on Redis, with claims (as the worker runs it)
    const joined = await joinRedisGuild({ url: server.url, guildId: "bench-redis", agentId: "phi_agent" });
    const host = new AgentHost({ backend: joined.backend, guildId: "bench-redis", props, ids: joined.ids, claims: joined.claims, history: joined.history, publishAnswer: joined.publishAnswer });
    await host.start();
    // the RusticAI side: another process, as a Python guild is
    const py = await startLineWorker(path.join(repoRoot(), "dist", "scripts", "bench-lib", "redis-client.js"),
        { url: server.url, guild: "bench-redis", topics: ["default_topic", "error_topic"] } satisfies RedisClientJob);
    const viaRedis = async (requests: number) => (await py.ask<{ ms: number[] }>({ requests, payload: { generation_prompt: BENCH_PROMPT } } satisfies RedisClientBatch)).ms;
    const mem: number[] = [];
    const red: number[] = [];
    const payload = GenerationPromptRequest.create({ generation_prompt: BENCH_PROMPT });
    const foreign = await quiet("overhead");
    // warm-up
    for (let i = 0; i < 5; i++) await client.request("default_topic", payload);
    await viaRedis(5);
    // one request of each in turn, so that what the machine does meanwhile hits both alike
    for (let r = 0; r < opts.rounds; r++) {
        for (let i = 0; i < opts.requests; i++) {
            const t0 = performance.now();
            await client.request("default_topic", payload);
            mem.push(performance.now() - t0);
            red.push(...await viaRedis(1));
        }
        process.stderr.write(`\roverhead: round ${r + 1}/${opts.rounds}`);
    }
    process.stderr.write("\n");
    await py.stop();
    await host.stop();
    await joined.close();
    await guild.shutdown();
    return {
        foreignBefore: foreign,
        inMemory: { p50: pct(mem, 50), p99: pct(mem, 99), n: mem.length },
        redis: { p50: pct(red, 50), p99: pct(red, 99), n: red.length },
        overheadP50: pct(red, 50) - pct(mem, 50),
        overheadP99: pct(red, 99) - pct(mem, 99),
    };
}

async function burst(server: RedisServer, modelPath: string, replicas: number, tokens: number) {
    const guild = `bench-replicas-${replicas}-${tokens}`;
    const cli = path.join(repoRoot(), "dist", "src", "cli", "main.js");
    const py = await PyClient.open(server.url, guild, ["default_topic", "heartbeat"]);
    const ready = new Map<string, () => void>();
    py.sub.on("message", (_ch: string, text: string) => {
        const r = parseWireMessage(text);
        if (!r.ok || r.message.format !== SystemFormats.HEARTBEAT) return;
        const replica = (r.message.payload.checkmeta as { replica_id?: string } | undefined)?.replica_id;
        if (replica) ready.get(replica)?.();
    });
    const children: ChildProcess[] = [];
    const up: Promise<void>[] = [];
    for (let i = 0; i < replicas; i++) {
        const id = `b${i}`;
        up.push(new Promise((resolve) => ready.set(id, resolve)));
        children.push(spawn(process.execPath, [cli, "agent", "--redis", server.url, "--guild", guild, "--model", modelPath, "--device", "cpu",
            "--threads", "1", "--context-size", "1024", "--replica-id", id], { stdio: ["ignore", "ignore", "ignore"] }));
    }
    await Promise.all(up);
    const foreign = await quiet(`${replicas} replica(s)`);
    const c0 = cpuSnapshot();
    const t0 = performance.now();
    await Promise.all(Array.from({ length: opts.burst }, (_, i) => py.request({ generation_prompt: `Request ${i}: ${BENCH_PROMPT}`, max_tokens: tokens })));
    const seconds = (performance.now() - t0) / 1000;
    const busy = busyShare(c0, cpuSnapshot());
    for (const c of children) c.kill("SIGTERM");
    await Promise.all(children.map((c) => once(c, "exit")));
    py.close();
    return { replicas, tokens, requests: opts.burst, seconds, requestsPerSecond: opts.burst / seconds, tokensPerSecond: (opts.burst * tokens) / seconds, foreignBefore: foreign, machineBusy: busy };
}

const server = await startRedisServer({ persist: false });
try {
    const modelPath = await ensureTestModel({ shape: "tiny", type: "q8_0", seed: 1 });
    const o = opts.only === "replicas" ? undefined : await overhead(server, modelPath);
    const scaling = [];
    for (const tokens of opts.only === "overhead" ? [] : opts.tokens) {
        const one = await burst(server, modelPath, 1, tokens);
        const two = await burst(server, modelPath, 2, tokens);
        scaling.push({ tokens, one, two, ratio: two.requestsPerSecond / one.requestsPerSecond });
    }
    const result = { cpus: os.cpus().length, overhead: o, scaling };
    if (opts.json) process.stdout.write(JSON.stringify(result) + "\n");
    if (!opts.json && o) {
        process.stdout.write(`per request, 1 token, one at a time (${o.inMemory.n} each; others used ${(o.foreignBefore * 100).toFixed(0)}% of the CPUs before):\n`);
        process.stdout.write(`  in-memory guild          p50 ${fmtMs(o.inMemory.p50)}  p99 ${fmtMs(o.inMemory.p99)}\n`);
        process.stdout.write(`  Redis (agent host)       p50 ${fmtMs(o.redis.p50)}  p99 ${fmtMs(o.redis.p99)}\n`);
        process.stdout.write(`  Redis overhead           p50 ${fmtMs(o.overheadP50)}  p99 ${fmtMs(o.overheadP99)}\n`);
    }
    for (const { tokens, one, two, ratio } of opts.json ? [] : scaling) {
        process.stdout.write(`replicas (${opts.burst} requests × ${tokens} tokens, 1 thread each, ${os.cpus().length} CPUs):\n`);
        for (const r of [one, two]) {
            process.stdout.write(`  ${r.replicas} replica(s)  ${r.requestsPerSecond.toFixed(1)} req/s  ${r.tokensPerSecond.toFixed(0)} tok/s  (${r.seconds.toFixed(2)} s; ` +
                `others used ${(r.foreignBefore * 100).toFixed(0)}% of the CPUs just before, the machine was ${(r.machineBusy * 100).toFixed(0)}% busy during)\n`);
        }
        process.stdout.write(`  scaling 2/1: ${ratio.toFixed(2)}×\n`);
    }
} finally {
    await server.stop();
}
