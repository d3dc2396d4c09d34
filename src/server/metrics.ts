/**
 * GET /metrics: the server's counters in Prometheus' text format (prom-client, one registry per server, so two
 * servers in one process never mix their numbers).
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export interface QueueState {
    /** Requests decoding now (they hold a sequence slot). */
    active: number;
    /** Requests admitted by the server and waiting for a slot. */
    waiting: number;
}

export class ServerMetrics {
    readonly registry = new Registry();
    readonly requests: Counter<"route" | "status">;
    readonly errors: Counter<"type" | "code">;
    readonly promptTokens: Counter;
    readonly completionTokens: Counter;
    readonly generations: Counter<"finish_reason">;
    readonly timeToFirstToken: Histogram;
    readonly decodeRate: Gauge;

    constructor(queue: () => QueueState) {
        const registers = [this.registry];
        this.requests = new Counter({ name: "phi_agent_requests_total", help: "HTTP requests answered, by route and status", labelNames: ["route", "status"], registers });
        this.errors = new Counter({ name: "phi_agent_errors_total", help: "Error responses (and errors sent inside streams), by type and code", labelNames: ["type", "code"], registers });
        this.promptTokens = new Counter({ name: "phi_agent_prompt_tokens_total", help: "Prompt tokens of finished generations", registers });
        this.completionTokens = new Counter({ name: "phi_agent_completion_tokens_total", help: "Generated tokens of finished generations", registers });
        this.generations = new Counter({ name: "phi_agent_generations_total", help: "Finished generations, by finish reason (abort: the client went away)", labelNames: ["finish_reason"], registers });
        this.timeToFirstToken = new Histogram({
            name: "phi_agent_time_to_first_token_seconds", help: "From admission to the first generated token",
            buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers,
        });
        this.decodeRate = new Gauge({ name: "phi_agent_decode_tokens_per_second", help: "Decode speed of the last finished generation (tokens after the first / their time)", registers });
        new Gauge({
            name: "phi_agent_queue_active", help: "Generations decoding now", registers,
            collect() { this.set(queue().active); },
        });
        new Gauge({
            name: "phi_agent_queue_waiting", help: "Generations admitted and waiting for a sequence slot", registers,
            collect() { this.set(queue().waiting); },
        });
    }
}
