/**
 * phi-agent agent: our LLMPhiAgent as a worker in a RusticAI guild over Redis (AgentHost on the Redis
 * messaging backend). Several workers with the same --agent-id, on any hosts, are replicas: they share the
 * requests and each request is answered once (src/guild/claims.ts).
 */
import { PhiAgentProps, type PhiAgentPropsInit } from "../agent/PhiAgentProps.js";
import { AgentHost, type AgentHostEvent, type RequestLine } from "../guild/rustic/AgentHost.js";
import { PYTHON_PHI_AGENT_CLASS } from "../guild/rustic/protocol.js";
import { formatGuildEvent } from "../guild/events.js";
import { CLAIM_DEFAULTS } from "../guild/claims.js";
import { choiceFlag, intFlag, numberFlag, UsageError } from "./args.js";
import { modelPath, parseCommand, type Command } from "./command.js";
import { out, shutdownSignal } from "./process.js";
import { joinRedisGuild } from "../guild/rustic/join.js";

const int = (name: string, value: string | undefined) => intFlag(name, value);
const float = (name: string, value: string | undefined) => numberFlag(name, value);

/** The worker's flags (parseCommand's table). */
const FLAGS = {
    redis: { type: "string" }, guild: { type: "string" }, model: { type: "string" },
    "agent-id": { type: "string" }, "agent-name": { type: "string" }, "agent-type": { type: "string" },
    device: { type: "string" }, threads: { type: "string" }, "context-size": { type: "string" }, sequences: { type: "string" },
    "gpu-layers": { type: "string" }, "flash-attention": { type: "string" },
    "max-length": { type: "string" }, "max-new-tokens": { type: "string" }, temperature: { type: "string" },
    "top-k": { type: "string" }, "top-p": { type: "string" }, "repeat-penalty": { type: "string" }, seed: { type: "string" },
    stop: { type: "string", multiple: true }, "no-prompt-in-response": { type: "boolean" },
    topic: { type: "string", multiple: true }, "no-default-topic": { type: "boolean" },
    "replica-id": { type: "string" }, "claim-lease-ms": { type: "string" }, "drain-timeout-ms": { type: "string" },
    json: { type: "boolean" },
} as const;

/** The agent's properties from the flags (a bad value throws a usage error before anything connects). */
function propsOf(values: Partial<Record<keyof typeof FLAGS, string | string[] | boolean>>): PhiAgentProps {
    const s = (k: keyof typeof FLAGS) => values[k] as string | undefined;
    const gpu = s("gpu-layers");
    const init: PhiAgentPropsInit = {
        modelPath: modelPath(s("model")),
        device: s("device"),
        threads: int("threads", s("threads")),
        contextSize: int("context-size", s("context-size")),
        sequences: int("sequences", s("sequences")),
        gpuLayers: gpu === "all" ? "all" : int("gpu-layers", gpu),
        flashAttention: choiceFlag("flash-attention", s("flash-attention"), ["auto", "on", "off"] as const),
        maxLength: int("max-length", s("max-length")),
        maxNewTokens: int("max-new-tokens", s("max-new-tokens")),
        temperature: float("temperature", s("temperature")),
        topK: int("top-k", s("top-k")),
        topP: float("top-p", s("top-p")),
        repeatPenalty: float("repeat-penalty", s("repeat-penalty")),
        seed: int("seed", s("seed")),
        stop: values.stop as string[] | undefined,
        includePrompt: values["no-prompt-in-response"] ? false : undefined,
    };
    return new PhiAgentProps(init);
}

function requestText(e: RequestLine): string {
    const head = `request ${e.requestId} from ${e.sender ?? "?"} on ${e.topic ?? "?"}: ${e.outcome.replace("_", " ")}`;
    const to = e.replyTopics.length > 0 ? ` → ${e.replyTopics.join(", ")}` : "";
    const tokens = e.completionTokens !== undefined ? `, ${e.completionTokens} tokens` : "";
    const error = e.error ? ` (${e.error.type}: ${e.error.message.split("\n")[0]})` : "";
    return `${head}${to}${error} in ${e.ms} ms${tokens}`;
}

function logEvent(e: AgentHostEvent, json: boolean): void {
    const time = new Date().toISOString();
    if (e.type === "request") {
        out(json ? JSON.stringify({ time, ...e }) + "\n" : `${time} ${requestText(e)}\n`);
        return;
    }
    let text: string | undefined;
    if (e.type === "ready") text = `joined: listening on ${e.topics.join(", ")}; SelfReadyNotification ${e.selfReadyId} sent`;
    else if (e.type === "heartbeat") text = e.first ? `first heartbeat ${e.heartbeatId} sent` : undefined;
    else if (e.type === "log") text = `${e.level}: ${e.message}`;
    else if (e.type === "agent" && !(e.event.type === "agent_event" && e.event.name === "model_load_progress")) text = formatGuildEvent(e.event);
    if (text !== undefined) process.stderr.write(`${time} ${text}\n`);
}

export const agent: Command = async (argv: string[]): Promise<void> => {
    const { values } = parseCommand(argv, agent.usage!, FLAGS);
    if (!values.redis) throw new UsageError("--redis URL is required (redis://[user:password@]host:port[/db], or rediss:// for TLS)");
    if (!values.guild) throw new UsageError("--guild GUILD_ID is required (the RusticAI guild's id: its Redis namespace)");
    const props = propsOf(values);
    const leaseMs = intFlag("claim-lease-ms", values["claim-lease-ms"], 100);
    const drainMs = intFlag("drain-timeout-ms", values["drain-timeout-ms"], 0);
    const agentId = values["agent-id"] ?? "phi_agent";
    const stop = shutdownSignal();
    const json = values.json === true;
    const joined = await joinRedisGuild({
        url: values.redis, guildId: values.guild, agentId,
        ...(values["replica-id"] !== undefined ? { replicaId: values["replica-id"] } : {}),
        ...(leaseMs !== undefined ? { claimLeaseMs: leaseMs } : {}),
        onLog: (level: "info" | "warn" | "error", message: string) => logEvent({ type: "log", level, message }, json),
    });
    let host: AgentHost | undefined;
    try {
        host = new AgentHost({
            backend: joined.backend, guildId: values.guild, agentId,
            agentName: values["agent-name"] ?? "Phi-2 LLM",
            agentType: values["agent-type"] ?? PYTHON_PHI_AGENT_CLASS,
            props,
            ...(values.topic ? { additionalTopics: values.topic } : {}),
            listenToDefaultTopic: values["no-default-topic"] !== true,
            ids: joined.ids,
            claims: joined.claims,
            history: joined.history,
            publishAnswer: joined.publishAnswer,
            onEvent: (e) => logEvent(e, json),
        });
        if (!stop.aborted) {
            const starting = host.start();
            starting.catch(() => undefined); // awaited below unless a signal came first
            // a signal while the model loads stops the start too
            await Promise.race([starting, new Promise<void>((resolve) => stop.addEventListener("abort", () => resolve(), { once: true }))]);
            if (!stop.aborted) await starting;
        }
        process.stderr.write(`${new Date().toISOString()} phi-agent agent "${agentId}" in guild "${values.guild}" (replica ${joined.claims.replicaId}, machine id ${joined.machineId}); SIGTERM or Ctrl-C stops it\n`);
        if (!stop.aborted) await new Promise<void>((resolve) => stop.addEventListener("abort", () => resolve(), { once: true }));
        process.stderr.write(`${new Date().toISOString()} stopping: no new requests; ${host.inflight} in flight, ${host.queued} queued\n`);
        const summary = await host.stop(drainMs !== undefined ? { drainMs } : {});
        process.stderr.write(`${new Date().toISOString()} stopped: ${summary.finished} finished, ${summary.handedBack} handed back${summary.left > 0 ? `, ${summary.left} left to the other replicas` : ""}\n`);
    } finally {
        await host?.stop().catch(() => undefined);
        await joined.close();
    }
};

agent.usage = `agent --redis URL --guild GUILD_ID --model FILE [--agent-id phi_agent] [--agent-name "Phi-2 LLM"]
                 [--device D] [--threads N] [--context-size N] [--sequences N] [--gpu-layers N|all]
                 [--flash-attention auto|on|off] [--max-length N] [--max-new-tokens N] [--temperature T]
                 [--top-k K] [--top-p P] [--repeat-penalty R] [--seed S] [--stop TEXT]... [--no-prompt-in-response]
                 [--topic TOPIC]... [--no-default-topic] [--agent-type CLASS] [--replica-id ID]
                 [--claim-lease-ms N] [--drain-timeout-ms N] [--json]

Joins the RusticAI guild GUILD_ID over Redis as the agent --agent-id (Python's LLMPhiAgent: it answers
GenerationPromptRequest on default_topic, agent_inbox:ID and each --topic, sends SelfReadyNotification and
Heartbeats, answers health checks) and logs one line per request on stdout (--json: one JSON object).
Workers with the same --agent-id, on any hosts, are replicas: each request is answered once; a replica that
dies mid-request has it taken over when its claim's lease runs out (--claim-lease-ms, default ${CLAIM_DEFAULTS.leaseMs}).
SIGTERM or Ctrl-C: no new requests; those in flight finish (at most --drain-timeout-ms, then they are handed
back to the other replicas); exit 0. URL: redis://[user:password@]host:port[/db], rediss:// for TLS.
--agent-type is the class name routing rules match (default ${PYTHON_PHI_AGENT_CLASS}).`;
