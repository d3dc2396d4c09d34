/**
 * Random GBNF texts for test/grammar.fuzz.test.ts: well-formed grammars built from random rules, and mutations of
 * them and of llama.cpp's shipped grammars (characters deleted, inserted, swapped), so that both sides of every
 * check get exercised, with a few of each known trap (bad escapes, x{3,1}, repetitions past 2000...).
 */
import { prng as rng } from "../../scripts/malformed-corpus.js";

const NAMES = ["root", "a", "b", "item", "list", "ws", "x-1", "val", "root-2"];
const LITERAL_CHARS = ["a", "b", "z", " ", "é", "日", "\\n", "\\t", "\\\"", "\\\\", "\\x41", "\\u00e9", "\\U0001F600", "-", "]", "["];
const BAD_CHARS = ["\\q", "\\x4", "\\x00", "\\uD800", "\\U00110000"];
const CLASSES = ["[a-z]", "[^a-z]", "[0-9]", "[z-a]", "[a-]", "[\\x00-\\x1F]", "[^\\x01-\\U0010FFFF]", "[\\]\\-]", "[^\"\\\\]", "[ \\t\\n]", "[a-z]", "[0-9a-f]"];

export function randomGrammars(seed: number, count: number, seeds: readonly string[]): string[] {
    const r = rng(seed);
    const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

    const item = (depth: number, names: string[]): string => {
        switch (int(0, depth > 0 ? 8 : 4)) {
            case 0: return `"${Array.from({ length: int(1, 3) }, () => (r() < 0.01 ? pick(BAD_CHARS) : pick(LITERAL_CHARS))).join("")}"`;
            case 1: return pick(CLASSES);
            case 2: return pick(names);
            case 3: return r() < 0.5 ? "." : `${r() < 0.3 ? "!" : ""}<[${pick([0, 13, 262, 464, 50256, 51199, 99999, 4294967296])}]>`;
            case 4: return `"${pick(["x", "y", "{", "}", ","])}"`;
            case 5: return `(${alternatives(depth - 1, names)})`;
            default: {
                const base = item(depth - 1, names);
                const min = int(0, 3);
                if (r() < 0.015) return base + pick([`{${int(1990, 2010)}}`, "{0,2100}", "{3,1}"]);
                return base + pick(["*", "+", "?", `{${min}}`, `{${min},}`, `{${min},${min + int(0, 4)}}`]);
            }
        }
    };
    const sequence = (depth: number, names: string[], min = 0) => Array.from({ length: int(min, 3) }, () => item(depth, names)).join(" ");
    // the last alternative is never empty: a line ending in '|' goes on with the next line (as llama.cpp reads it)
    const alternatives = (depth: number, names: string[]) => {
        const n = int(1, 3);
        return Array.from({ length: n }, (_, i) => sequence(depth, names, i === n - 1 ? 1 : 0)).join(" | ");
    };

    const wellFormed = (): string => {
        const names = NAMES.slice(0, r() < 0.8 ? int(1, 4) : int(1, NAMES.length));
        if (!names.includes("root") && r() < 0.9) names[0] = "root";
        const lines = names.map((n) => `${n} ::= ${alternatives(2, names)}`);
        if (r() < 0.2) lines.splice(int(0, lines.length), 0, "# a comment");
        return lines.join(r() < 0.1 ? "\r\n" : "\n") + (r() < 0.5 ? "\n" : "");
    };
    const mutate = (text: string): string => {
        const chars = Array.from(text);
        for (let k = int(1, 3); k > 0; k--) {
            const at = int(0, Math.max(0, chars.length - 1));
            switch (int(0, 2)) {
                case 0: chars.splice(at, 1); break;
                case 1: chars.splice(at, 0, pick(["(", ")", "|", "\"", "[", "]", "\n", ":", "=", "{", "}", "*", "\\", "<", ">", "!", "#", " "])); break;
                default: if (at + 1 < chars.length) [chars[at], chars[at + 1]] = [chars[at + 1]!, chars[at]!];
            }
        }
        return chars.join("");
    };

    const out: string[] = [];
    for (let i = 0; i < count; i++) {
        const kind = r();
        if (kind < 0.55) out.push(wellFormed());
        else if (kind < 0.85) out.push(mutate(wellFormed()));
        else out.push(mutate(pick(seeds)));
    }
    return out;
}
