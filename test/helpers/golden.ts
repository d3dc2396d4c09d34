/** The recorded RusticAI guild run (test/fixtures/rusticai/), split into commands. */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const GOLDEN_FILE = fileURLToPath(new URL("../../../test/fixtures/rusticai/redis-monitor-guild-run.txt", import.meta.url));

export interface GoldenCommand {
    time: number;
    command: string;
    /** The rest of the line, unsplit (message JSON may hold spaces). */
    rest: string;
}

export interface GoldenMessage {
    /** "SET" (msg:{g}:{id} <json> EX ttl), "ZADD" ({g}:{t} <score> <json>) or "PUBLISH" ({g}:{t} <json>). */
    command: "SET" | "ZADD" | "PUBLISH";
    key: string;
    json: string;
    /** ZADD's score; SET's EX seconds. */
    number?: string;
}

export function goldenCommands(): GoldenCommand[] {
    return readFileSync(GOLDEN_FILE, "utf8").split("\n").filter((l) => l.length > 0).map((line) => {
        const m = /^(\S+) \S+ (\S+) ?(.*)$/.exec(line);
        if (!m) throw new Error(`unreadable golden line: ${line.slice(0, 80)}`);
        return { time: Number(m[1]), command: m[2]!, rest: m[3]! };
    });
}

/** Every message JSON written in the run (the SET msg:..., ZADD and PUBLISH values), in order. */
export function goldenMessages(): GoldenMessage[] {
    const out: GoldenMessage[] = [];
    for (const c of goldenCommands()) {
        const sp = c.rest.indexOf(" ");
        const key = c.rest.slice(0, sp);
        const tail = c.rest.slice(sp + 1);
        if (c.command === "SET" && key.startsWith("msg:")) {
            const m = / EX (\d+)$/.exec(tail)!;
            out.push({ command: "SET", key, json: tail.slice(0, m.index), number: m[1]! });
        } else if (c.command === "ZADD") {
            const sp2 = tail.indexOf(" ");
            out.push({ command: "ZADD", key, number: tail.slice(0, sp2), json: tail.slice(sp2 + 1) });
        } else if (c.command === "PUBLISH") {
            out.push({ command: "PUBLISH", key, json: tail });
        }
    }
    return out;
}
