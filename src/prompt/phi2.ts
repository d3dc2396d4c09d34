/**
 * Phi-2's prompt formats. Phi-2 is a base model without a chat template; its model card documents a QA form,
 *
 *     Instruct: <instruction>\nOutput:
 *
 * and a chat form of named speakers taking turns. This module writes both: formatPhi2Prompt() the QA form, and
 * formatPhi2Chat() a list of chat messages (OpenAI's roles) as one prompt, with the stop strings that end the
 * model's turn. The server (src/server) uses formatPhi2Chat() for chat requests when the GGUF has no
 * `tokenizer.chat_template` of its own. README "Phi-2 prompt format".
 */
import { PhiRangeError, PhiTypeError } from "../errors.js";

/** A chat message: the OpenAI roles ("developer" is OpenAI's newer name for "system"). */
export interface Phi2ChatMessage {
    role: "system" | "developer" | "user" | "assistant";
    content: string;
}

/**
 * Strings that end the model's turn in both forms: Phi-2 goes on writing the next "User:" turn (chat form) or a
 * new "Instruct:" (QA form) when it is not stopped. Generation must stop at these (GenerateOptions.stop).
 */
export const PHI2_STOP: readonly string[] = Object.freeze(["\nUser:", "\nInstruct:"]);

/** The speaker labels of the multi-turn form. */
export const PHI2_USER = "User";
export const PHI2_ASSISTANT = "Assistant";

/**
 * Phi-2's documented QA form: `Instruct: <instruct>\nOutput:`. With `system`, its text comes first on the
 * instruction line, on a line of its own: `Instruct: <system>\n<instruct>\nOutput:`.
 */
export function formatPhi2Prompt(options: { instruct: string; system?: string }): string {
    if (typeof options !== "object" || options === null) throw new PhiTypeError(`formatPhi2Prompt() expects { instruct: string }, got ${String(options)}`);
    const { instruct, system } = options;
    if (typeof instruct !== "string") throw new PhiTypeError(`Expected "instruct" to be a string, got ${typeof instruct}`);
    if (system !== undefined && typeof system !== "string") throw new PhiTypeError(`Expected "system" to be a string, got ${typeof system}`);
    const sys = system?.trim();
    return `Instruct: ${sys ? `${sys}\n` : ""}${instruct.trim()}\nOutput:`;
}

/**
 * Chat messages as one Phi-2 prompt, and the stop strings to generate it with.
 *
 * - System (and developer) messages come first, as plain lines.
 * - One user turn (and no assistant turn): the QA form, `Instruct: <user>\nOutput:` (after the system lines).
 * - Otherwise, the multi-turn form: one line per turn, `User: <text>` and `Assistant: <text>`, ending in
 *   `Assistant:` for the model to continue. A last assistant message is a prefill: the prompt ends with its text
 *   (`Assistant: <text>`), and the model continues it.
 *
 * ```text
 * You are a terse assistant.
 * User: What is 2 + 2?
 * Assistant: 4.
 * User: And 3 + 3?
 * Assistant:
 * ```
 * `stop` is PHI2_STOP: the model's turn ends where it would start the next user turn or a new instruction.
 */
export function formatPhi2Chat(messages: readonly Phi2ChatMessage[]): { prompt: string; stop: string[] } {
    if (!Array.isArray(messages)) throw new PhiTypeError(`formatPhi2Chat() expects an array of messages, got ${typeof messages}`);
    const system: string[] = [];
    const turns: Phi2ChatMessage[] = [];
    messages.forEach((m, i) => {
        if (typeof m !== "object" || m === null) throw new PhiTypeError(`messages[${i}] must be an object { role, content }`);
        if (typeof m.content !== "string") throw new PhiTypeError(`messages[${i}].content must be a string, got ${typeof m.content}`);
        if (m.role === "system" || m.role === "developer") {
            if (turns.length > 0) throw new PhiRangeError(`messages[${i}]: a ${m.role} message must come before the user and assistant turns`);
            if (m.content.trim()) system.push(m.content.trim());
        } else if (m.role === "user" || m.role === "assistant") {
            turns.push(m);
        } else {
            throw new PhiRangeError(`messages[${i}].role is ${JSON.stringify((m as { role: unknown }).role)}; Phi-2 chat knows "system", "developer", "user" and "assistant"`);
        }
    });
    if (!turns.some((t) => t.role === "user")) throw new PhiRangeError(`messages has no user message; a chat needs at least one { role: "user", content }`);
    const stop = [...PHI2_STOP];
    if (turns.length === 1 && turns[0]!.role === "user") {
        const head = system.length ? `${system.join("\n")}\n` : "";
        return { prompt: `${head}${formatPhi2Prompt({ instruct: turns[0]!.content })}`, stop };
    }
    const lines = [...system];
    turns.forEach((t, i) => {
        const label = t.role === "user" ? PHI2_USER : PHI2_ASSISTANT;
        const text = t.content.trim();
        const last = i === turns.length - 1;
        lines.push(text || !last ? `${label}: ${text}` : `${label}:`);
    });
    if (turns[turns.length - 1]!.role === "user") lines.push(`${PHI2_ASSISTANT}:`);
    return { prompt: lines.join("\n"), stop };
}
