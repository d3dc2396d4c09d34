/**
 * Generators for test/grammar.property.test.ts: random JSON Schemas of the supported keywords (bounded so that a
 * random-weight model finishes them), and a tiny regular-expression AST written both as GBNF and as a RegExp.
 */
/** mulberry32 (seeded, so every run tests the same cases): the one in scripts/malformed-corpus.ts. */
export { prng as rng } from "../../scripts/malformed-corpus.js";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Schema = Record<string, unknown>;

export class SchemaGen {
    constructor(readonly r: () => number) {}
    int(lo: number, hi: number): number {
        return lo + Math.floor(this.r() * (hi - lo + 1));
    }
    pick<T>(xs: readonly T[]): T {
        return xs[Math.floor(this.r() * xs.length)]!;
    }
    chance(p: number): boolean {
        return this.r() < p;
    }
    word(): string {
        return this.pick(["a", "id", "name", "x y", "ü", "key-2", "v", "n", "\"q\"", "tags", "ok", "é\u4e2d"]);
    }
    literal(): Json {
        return this.pick<Json>(["red", "green", "", "a\"b", "日本", 0, -3, 2.5, 1e3, true, false, null, [1, "x"], { k: 1 }]);
    }
    leaf(): Schema {
        switch (this.int(0, 11)) {
            case 0: {
                const max = this.int(0, 8);
                const s: Schema = { type: "string", maxLength: max };
                if (this.chance(0.4)) s.minLength = this.int(0, Math.min(max, 3));
                return s;
            }
            case 1: return this.chance(0.05) ? { type: "string" } : { type: "string", minLength: 1, maxLength: this.int(1, 6) };
            case 2: return { type: "integer" };
            case 3: {
                const lo = this.int(-50, 50);
                const s: Schema = { type: "integer", minimum: lo, maximum: lo + this.int(0, 300) };
                if (this.chance(0.3)) s.exclusiveMaximum = (s.maximum as number) + 1, delete s.maximum;
                return s;
            }
            case 4: return this.chance(0.5) ? { type: "number" } : { type: "number", minimum: this.int(-10, 0), exclusiveMaximum: this.int(1, 20) };
            case 5: return { type: "boolean" };
            case 6: return { type: "null" };
            case 7: {
                const values = [...new Set(Array.from({ length: this.int(1, 4) }, () => JSON.stringify(this.literal())))].map((v) => JSON.parse(v) as Json);
                return { enum: values };
            }
            case 8: return { const: this.literal() };
            case 9: return { type: this.pick([["string", "null"], ["integer", "boolean"], ["number", "string"]]), maxLength: 5 };
            case 10: return { anyOf: [this.leaf(), this.leaf()] };
            default: return { type: "integer", minimum: 0 };
        }
    }
    schema(depth: number): Schema {
        if (depth <= 0 || this.chance(0.35)) return this.leaf();
        switch (this.int(0, 4)) {
            case 0:
            case 1: {
                const n = this.int(1, 4);
                const properties: Schema = {};
                for (let i = 0; i < n; i++) properties[`${this.word()}${i}`] = this.schema(depth - 1);
                const names = Object.keys(properties);
                const s: Schema = { type: "object", properties, required: names.filter(() => this.chance(0.5)) };
                if (this.chance(0.5)) s.additionalProperties = false;
                return s;
            }
            case 2: {
                const min = this.int(0, 2);
                return { type: "array", items: this.schema(depth - 1), minItems: min, maxItems: min + this.int(0, 3) };
            }
            case 3: {
                const items = Array.from({ length: this.int(1, 3) }, () => this.schema(depth - 1));
                return { type: "array", items, additionalItems: false, minItems: items.length, maxItems: items.length };
            }
            default: {
                // a $ref to the root's $defs, sometimes recursive (a tree whose children are optional)
                const name = `d${Object.keys(this.defs).length}`;
                if (this.chance(0.3)) {
                    this.defs[name] = { type: "object", properties: { v: this.leaf(), kids: { type: "array", items: { $ref: `#/$defs/${name}` }, maxItems: 2 } }, required: ["v"], additionalProperties: false };
                    return { $ref: `#/$defs/${name}` };
                }
                this.defs[name] = {}; // reserved: the schema below may add defs of its own
                this.defs[name] = this.schema(depth - 1);
                return { type: "object", properties: { first: { $ref: `#/$defs/${name}` }, second: { $ref: `#/$defs/${name}` } }, required: ["first"] };
            }
        }
    }
    /** $defs of the schema being generated (refs point at the root's $defs, as "#/$defs/..." means). */
    defs: Schema = {};
    /** A whole schema: `schema(depth)` with the $defs it refers to at its root. */
    top(depth: number): Schema {
        this.defs = {};
        const s = this.schema(depth);
        return Object.keys(this.defs).length > 0 ? { ...s, $defs: this.defs } : s;
    }
}

/** A tiny regular-expression AST, written both as GBNF and as a JavaScript RegExp (the independent check). */
export type Rx = { lit: string } | { cls: string; neg?: boolean } | { seq: Rx[] } | { alt: Rx[] } | { rep: Rx; min: number; max: number };

export class RxGen {
    constructor(readonly r: () => number) {}
    int(lo: number, hi: number): number {
        return lo + Math.floor(this.r() * (hi - lo + 1));
    }
    gen(depth: number): Rx {
        const k = depth <= 0 ? this.int(0, 1) : this.int(0, 4);
        switch (k) {
            case 0: return { lit: ["a", "ab", "-", "x y", "\"", "é", "{", "\\", "7"][this.int(0, 8)]! };
            case 1: return [{ cls: "a-z" }, { cls: "0-9" }, { cls: "aeiou" }, { cls: "a-z", neg: true }, { cls: " .," }][this.int(0, 4)]!;
            case 2: return { seq: Array.from({ length: this.int(2, 3) }, () => this.gen(depth - 1)) };
            case 3: return { alt: Array.from({ length: this.int(2, 3) }, () => this.gen(depth - 1)) };
            default: {
                const min = this.int(0, 2);
                const item = this.gen(depth - 1);
                // an item that may be empty is not repeated (checkGbnf refuses that: it is ambiguous)
                return mayBeEmpty(item) ? item : { rep: item, min, max: min + this.int(0, 4) };
            }
        }
    }
}
function mayBeEmpty(x: Rx): boolean {
    if ("lit" in x) return x.lit === "";
    if ("cls" in x) return false;
    if ("seq" in x) return x.seq.every(mayBeEmpty);
    if ("alt" in x) return x.alt.some(mayBeEmpty);
    return x.min === 0 || mayBeEmpty(x.rep);
}
export function gbnfOf(x: Rx): string {
    if ("lit" in x) return JSON.stringify(x.lit).replace(/\\u00/g, "\\x"); // JSON string escapes are GBNF escapes here
    if ("cls" in x) return `[${x.neg ? "^" : ""}${x.cls}]`;
    if ("seq" in x) return `(${x.seq.map(gbnfOf).join(" ")})`;
    if ("alt" in x) return `(${x.alt.map(gbnfOf).join(" | ")})`;
    return `(${gbnfOf(x.rep)}){${x.min},${x.max}}`;
}
export function regexOf(x: Rx): string {
    if ("lit" in x) return x.lit.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    if ("cls" in x) return `[${x.neg ? "^" : ""}${x.cls.replace(/\./g, "\\.")}]`;
    if ("seq" in x) return `(?:${x.seq.map(regexOf).join("")})`;
    if ("alt" in x) return `(?:${x.alt.map(regexOf).join("|")})`;
    return `(?:${regexOf(x.rep)}){${x.min},${x.max}}`;
}

