/**
 * Dead letters as RusticAI writes them (core/messaging/core/dead_letter.py): a `generic_json` message from
 * `{id: "messaging_backend", name: "MessagingBackend"}` to `dead_letter_queue`, `is_error_message: true`,
 * `in_response_to` the failed message's id, payload a `DeliveryFailurePayload`. Python writes one when a handler
 * raises; we also write one for a message on a topic that is not a valid Message at all (Python's pub/sub thread
 * dies on those), with the JSON as it came in `original_message` (or `{"raw": text}` when it was not JSON).
 */
import { GENERIC_JSON_FORMAT } from "../format.js";
import { Priority } from "../ids.js";
import type { GemstoneIdGenerator } from "./gemstone.js";
import type { PyJson, PyJsonObject } from "./json.js";
import { createWireMessage, wireMessageToDict, type WireMessage } from "./message.js";

export const DEAD_LETTER_QUEUE = "dead_letter_queue";
export const DEAD_LETTER_SENDER = Object.freeze({ id: "messaging_backend", name: "MessagingBackend" });

/** The namespaced dead-letter topic for a failure on `namespacedTopic` (`resolve_dead_letter_topic`). */
export function deadLetterTopic(namespacedTopic: string, namespace?: string | null): string {
    if (namespace && namespacedTopic.startsWith(`${namespace}:`)) return `${namespace}:${DEAD_LETTER_QUEUE}`;
    const i = namespacedTopic.indexOf(":");
    return i >= 0 ? `${namespacedTopic.slice(0, i)}:${DEAD_LETTER_QUEUE}` : DEAD_LETTER_QUEUE;
}

export interface DeadLetterInit {
    generator: GemstoneIdGenerator;
    /** Who the backend calls the delivery: Python writes its class name. */
    deliveryBackend: string;
    /** `{guild}${agent_id}` of the subscriber whose delivery failed. */
    clientId: string;
    /** The namespaced topic it came on, e.g. `guild:default_topic`. */
    originalTopic: string;
    /** The message (when it was one), or what was received. */
    original: WireMessage | { text: string; value?: PyJson };
    /** The error's class name (Python: `type(error).__name__`) and text. */
    errorType: string;
    errorMessage: string;
}

/** The dead-letter message (publish it to `deadLetterTopic(...)` without setting topic_published_to, as Python does). */
export function buildDeadLetterMessage(init: DeadLetterInit): WireMessage {
    let originalId: bigint;
    let originalDict: PyJsonObject;
    if ("id" in init.original && typeof init.original.id === "bigint" && "payload" in init.original) {
        const m = init.original as WireMessage;
        originalId = m.id;
        originalDict = wireMessageToDict(m, { computed: true });
    } else {
        const raw = init.original as { text: string; value?: PyJson };
        const v = raw.value;
        if (v !== null && typeof v === "object" && !Array.isArray(v)) {
            originalDict = v;
            const id = v.id;
            originalId = typeof id === "bigint" ? BigInt.asUintN(64, id) : typeof id === "number" && Number.isInteger(id) && id >= 0 ? BigInt(id) : 0n;
        } else {
            originalDict = { raw: raw.text };
            originalId = 0n;
        }
    }
    return createWireMessage({
        generator: init.generator,
        priority: Priority.NORMAL,
        sender: { ...DEAD_LETTER_SENDER },
        topics: DEAD_LETTER_QUEUE,
        format: GENERIC_JSON_FORMAT,
        payload: {
            delivery_backend: init.deliveryBackend,
            client_id: init.clientId,
            original_topic: init.originalTopic,
            original_message_id: originalId,
            original_message: originalDict,
            error_type: init.errorType,
            error_message: init.errorMessage,
        },
        in_response_to: originalId,
        is_error_message: true,
    });
}
