/** Golden RusticAI messages (recorded from the Python code) and a probe that collects what an agent host publishes. */
import fs from "node:fs";
import path from "node:path";
import { parse as losslessParse } from "lossless-json";
import type { MessagingBackend } from "../../src/guild/backend.js";
import type { Message } from "../../src/messages/message.js";
import type { RusticMessage } from "../../src/guild/rustic/protocol.js";
import { packageRoot } from "../../src/native/binding.js";

const FIXTURE = path.join(packageRoot, "test", "fixtures", "rusticai-agent-golden.tsv");

let table: Map<string, string> | undefined;

/** The JSON text of a golden message (test/fixtures/rusticai-agent-golden.tsv: label, tab, the JSON Python published). */
export function golden(label: string): string {
    table ??= new Map(fs.readFileSync(FIXTURE, "utf8").split("\n").filter(Boolean).map((l) => {
        const tab = l.indexOf("\t");
        return [l.slice(0, tab), l.slice(tab + 1)];
    }));
    const text = table.get(label);
    if (text === undefined) throw new Error(`no golden message "${label}" in ${FIXTURE}`);
    return text;
}

/** The keys of a JSON object text, in order (top level). */
export function jsonKeys(text: string): string[] {
    return Object.keys(losslessParse(text) as object);
}

const ID_KEYS = new Set(["id", "in_response_to", "conversation_id", "origin_message_id", "origin", "result"]);

/** A message from its JSON text, ids as decimal strings (the form TypeScript messages hold them in). */
export function fromJson(text: string): RusticMessage {
    const toIds = (v: unknown, key: string | null, inPayload: boolean): unknown => {
        if (Array.isArray(v)) return v.map((x) => toIds(x, key === "thread" ? "thread" : null, inPayload));
        if (v && typeof v === "object" && !(typeof (v as { isLosslessNumber?: unknown }).isLosslessNumber === "boolean")) {
            return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toIds(x, k, inPayload || k === "payload" || k === "session_state")]));
        }
        const lossless = v as { isLosslessNumber?: boolean; value?: string } | null;
        if (lossless && lossless.isLosslessNumber) {
            const s = lossless.value!;
            if (!inPayload && key !== null && (ID_KEYS.has(key) || key === "thread")) return s;
            return Number(s);
        }
        return v;
    };
    return toIds(losslessParse(text), null, false) as RusticMessage;
}

/** Collects every message published on `topics` of a guild, and resolves waits as they come. */
export class Probe {
    readonly messages: RusticMessage[] = [];
    readonly #waits: { pred: (m: RusticMessage) => boolean; resolve: (m: RusticMessage) => void }[] = [];

    private constructor(readonly backend: MessagingBackend, readonly guildId: string, readonly id: string) {}

    static async listen(backend: MessagingBackend, guildId: string, topics: readonly string[], id = "probe"): Promise<Probe> {
        const p = new Probe(backend, guildId, id);
        for (const t of topics) await backend.subscribe(guildId, t, id, (m) => p.#add(m));
        return p;
    }

    #add(m: Message): void {
        const msg = m as RusticMessage;
        this.messages.push(msg);
        for (const w of [...this.#waits]) {
            if (w.pred(msg)) {
                this.#waits.splice(this.#waits.indexOf(w), 1);
                w.resolve(msg);
            }
        }
    }

    /** The first message (already here, or the next to come) that `pred` accepts. */
    next(pred: (m: RusticMessage) => boolean): Promise<RusticMessage> {
        const found = this.messages.find(pred);
        if (found) return Promise.resolve(found);
        return new Promise((resolve) => this.#waits.push({ pred, resolve }));
    }

    /** The reply (non-heartbeat) to request `id`. */
    replyTo(id: string, topic?: string): Promise<RusticMessage> {
        return this.next((m) => m.in_response_to === id && (topic === undefined || m.topic_published_to === topic));
    }

    /** Every message that answers `id` so far. */
    answersTo(id: string): RusticMessage[] {
        return this.messages.filter((m) => m.in_response_to === id);
    }
}
