/**
 * JSON Schema → GBNF: a grammar whose every complete document is JSON that validates against the schema.
 *
 * The grammar describes a subset of the valid documents, chosen so that generation always ends: properties come in
 * the schema's order (required ones first) and only declared ones are generated (a schema that allows extra
 * properties is still satisfied); whitespace is bounded (at most a newline and 20 spaces or tabs between tokens);
 * numbers have at most 16 integer digits, 16 fraction digits and 2 exponent digits; strings and arrays stop at
 * 2000 characters / 2001 items (llama.cpp's repetition limit) even when the schema allows more.
 *
 * Supported: type (one or a list), enum, const, properties, required, additionalProperties (true/false/a schema;
 * extra properties are generated only for objects that declare none), patternProperties with one catch-all
 * pattern (typebox's Type.Record), items (a schema, or a tuple array with additionalItems), prefixItems, minItems,
 * maxItems, minLength, maxLength, minimum/maximum/exclusiveMinimum/exclusiveMaximum (integers: any bound within
 * ±2^53; numbers: integer bounds within ±10^9), anyOf, oneOf (when its branches cannot overlap), allOf (one branch,
 * or object branches that merge), $ref to "#", "#/..." pointers and $id's in the same document, $defs/definitions,
 * booleans as schemas, and the annotations ($schema, $id, $comment, title, description, default, examples,
 * deprecated, readOnly, writeOnly). Anything else is a JsonSchemaError naming the keyword and where it is.
 */
import { GrammarError, JsonSchemaError, PhiTypeError } from "../errors.js";
import { GRAMMAR_LIMITS } from "../model/limits.js";
import { checkGbnf, gbnfLiteral } from "./gbnf.js";

type Schema = boolean | { [key: string]: unknown };
type Obj = { [key: string]: unknown };

const ANNOTATIONS = new Set(["$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$defs", "definitions"]);
const SUPPORTED = new Set([
    "type", "enum", "const", "properties", "required", "additionalProperties", "patternProperties", "items", "prefixItems",
    "additionalItems", "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "anyOf", "oneOf", "allOf", "$ref",
]);
const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"] as const;
type JsonType = (typeof TYPES)[number];
/** Patterns every property name matches (typebox's Type.Record(Type.String(), ...) writes "^(.*)$"). */
const CATCH_ALL_PATTERNS = new Set(["", ".*", "^.*$", "^(.*)$", "^.*", "(.*)"]);

/** Largest |bound| of an integer schema (beyond it doubles cannot hold every integer). */
const MAX_INT_BOUND = 2 ** 53;
/** Largest |bound| of a number schema (bound + fraction digits stay within a double's 15 exact digits). */
const MAX_NUMBER_BOUND = 1e9;
/** Most integer digits generated (JSON.parse keeps every such integer an integer). */
const INT_DIGITS = 16;
const MAX_REPEAT = GRAMMAR_LIMITS.repetition;

function isObject(v: unknown): v is Obj {
    return typeof v === "object" && v !== null && !Array.isArray(v);
}
function escapePointer(key: string): string {
    return key.replace(/~/g, "~0").replace(/\//g, "~1");
}
function showPointer(pointer: string): string {
    return pointer === "" ? "the schema's root" : `"#${pointer}"`;
}

/** A JSON value's canonical text (object keys sorted), to compare enum values as JSON Schema does. */
function canonical(v: unknown): string {
    if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
    if (isObject(v)) return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
    return JSON.stringify(v);
}

/** The JSON type of a value, as JSON Schema types it ("integer" for integral numbers). */
function typeOfValue(v: unknown): JsonType | undefined {
    if (v === null) return "null";
    if (Array.isArray(v)) return "array";
    switch (typeof v) {
        case "string": return "string";
        case "boolean": return "boolean";
        case "number": return Number.isFinite(v) ? (Number.isInteger(v) ? "integer" : "number") : undefined;
        case "object": return "object";
        default: return undefined;
    }
}

/**
 * The JSON pointer of the first part of `v` that is not plain JSON (JSON.stringify would drop or change it:
 * undefined, a function, NaN, a class instance...), or undefined when all of it is JSON.
 */
function notJson(v: unknown, pointer = "", depth = 0): string | undefined {
    if (v === null || typeof v === "string" || typeof v === "boolean") return undefined;
    if (typeof v === "number") return Number.isFinite(v) ? undefined : pointer;
    if (depth > 256) return pointer;
    if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) {
            const bad = notJson(v[i], `${pointer}/${i}`, depth + 1);
            if (bad !== undefined) return bad;
        }
        return undefined;
    }
    if (typeof v === "object") {
        const proto = Object.getPrototypeOf(v);
        if (proto !== Object.prototype && proto !== null) return pointer;
        for (const [k, x] of Object.entries(v as Obj)) {
            const bad = notJson(x, `${pointer}/${escapePointer(k)}`, depth + 1);
            if (bad !== undefined) return bad;
        }
        return undefined;
    }
    return pointer;
}

class Converter {
    /** name → body, in definition order. */
    readonly rules = new Map<string, string>();
    readonly #byBody = new Map<string, string>();
    readonly #prims = new Map<string, string>();
    /** Rule name of each $ref target (by the target schema object). */
    readonly #refRules = new Map<unknown, string>();
    /** JSON pointer each named rule came from (for messages about the grammar). */
    readonly pointers = new Map<string, string>();
    readonly #ids = new Map<string, { schema: Schema; pointer: string }>();

    constructor(readonly root: Schema) {
        this.#collectIds(root, "", 0);
    }

    #collectIds(s: unknown, pointer: string, depth: number): void {
        if (!isObject(s) || depth > 256) return;
        if (typeof s.$id === "string" && !this.#ids.has(s.$id)) this.#ids.set(s.$id, { schema: s as Schema, pointer });
        for (const [k, v] of Object.entries(s)) {
            if (k === "enum" || k === "const" || k === "default" || k === "examples") continue;
            if (Array.isArray(v)) v.forEach((x, i) => this.#collectIds(x, `${pointer}/${escapePointer(k)}/${i}`, depth + 1));
            else if (isObject(v)) this.#collectIds(v, `${pointer}/${escapePointer(k)}`, depth + 1);
        }
    }

    fail(pointer: string, message: string, keyword?: string): never {
        throw new JsonSchemaError(`JSON Schema ${showPointer(pointer)}: ${message}`, pointer, keyword);
    }

    /** A unique rule name from a hint (letters, digits, '-': no '_', which llama.cpp uses for its own rules). */
    #name(hint: string): string {
        let base = hint.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "r";
        if (base === "root") base = "root-value";
        let name = base;
        for (let i = 2; this.rules.has(name); i++) name = `${base}-${i}`;
        return name;
    }

    /** Defines a rule (or returns the one with the same body). */
    define(hint: string, body: string, pointer?: string): string {
        const existing = this.#byBody.get(body);
        if (existing) return existing;
        const name = this.#name(hint);
        this.rules.set(name, body);
        this.#byBody.set(body, name);
        if (pointer !== undefined) this.pointers.set(name, pointer);
        return name;
    }

    prim(kind: "ws" | "char" | "string" | "int-part" | "integer" | "number" | "boolean" | "null" | "value" | "object" | "array" | "frac-nz"): string {
        const have = this.#prims.get(kind);
        if (have) return have;
        let name: string;
        switch (kind) {
            case "ws": name = this.define("ws", `| " " | "\\n" [ \\t]{0,20}`); break;
            case "char": {
                // no \u escapes of surrogates: JSON Schema counts characters, and a pair of escapes is one character
                const hex = "[0-9a-fA-F]";
                const u = this.define("escape-u", `[0-9a-cA-Ce-fE-F] ${hex}{3} | [dD] [0-7] ${hex}{2}`);
                name = this.define("char", `[^"\\\\\\x00-\\x1F\\x7F] | "\\\\" (["\\\\/bfnrt] | "u" ${u})`);
                break;
            }
            case "string": name = this.define("string", `"\\"" ${this.prim("char")}* "\\""`); break;
            case "int-part": name = this.define("int-part", `"0" | [1-9] [0-9]{0,${INT_DIGITS - 1}}`); break;
            case "integer": name = this.define("integer", `"-"? ${this.prim("int-part")}`); break;
            case "number": name = this.define("number", `"-"? ${this.prim("int-part")} ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?`); break;
            case "frac-nz": name = this.define("fraction", `"." [0-9]{0,5} [1-9]`); break;
            case "boolean": name = this.define("boolean", `"true" | "false"`); break;
            case "null": name = this.define("null", `"null"`); break;
            case "value": {
                // any JSON value: value, object and array refer to each other, so the names come first
                name = this.#name("value");
                this.rules.set(name, "");
                this.#prims.set("value", name);
                const object = this.#name("object");
                this.rules.set(object, "");
                this.#prims.set("object", object);
                const array = this.#name("array");
                this.rules.set(array, "");
                this.#prims.set("array", array);
                this.rules.set(name, [object, array, this.prim("string"), this.prim("number"), this.prim("boolean"), this.prim("null")].join(" | "));
                const ws = this.prim("ws");
                const str = this.prim("string");
                this.rules.set(object, `"{" ${ws} (${str} ${ws} ":" ${ws} ${name} ${ws} ("," ${ws} ${str} ${ws} ":" ${ws} ${name} ${ws})*)? "}"`);
                this.rules.set(array, `"[" ${ws} (${name} ${ws} ("," ${ws} ${name} ${ws})*)? "]"`);
                return name;
            }
            case "object": this.prim("value"); return this.#prims.get("object")!;
            case "array": this.prim("value"); return this.#prims.get("array")!;
        }
        this.#prims.set(kind, name);
        return name;
    }

    // ----------------------------------------------------------------------------------------------------------

    /** The grammar expression (a rule name) for `s`. */
    visit(s: unknown, pointer: string, hint: string): string {
        if (s === true) return this.prim("value");
        if (s === false) this.fail(pointer, "is false, which no value matches");
        if (!isObject(s)) this.fail(pointer, `must be an object or a boolean, got ${Array.isArray(s) ? "an array" : s === null ? "null" : typeof s}`);
        for (const key of Object.keys(s)) {
            if (ANNOTATIONS.has(key) || SUPPORTED.has(key)) continue;
            this.fail(`${pointer}/${escapePointer(key)}`, `the keyword "${key}" is not supported; remove it (supported: ${[...SUPPORTED].join(", ")}; README "Typed output")`, key);
        }
        const keys = Object.keys(s).filter((k) => !ANNOTATIONS.has(k));
        if (keys.length === 0) return this.prim("value");
        if ("$ref" in s) {
            const others = keys.filter((k) => k !== "$ref");
            if (others.length > 0) this.fail(`${pointer}/${escapePointer(others[0]!)}`, `"${others[0]}" next to "$ref" is not supported; move it into the referenced schema`, others[0]);
            return this.#ref(s.$ref, `${pointer}/$ref`);
        }
        for (const k of ["anyOf", "oneOf", "allOf"] as const) {
            if (!(k in s)) continue;
            const others = keys.filter((x) => x !== k && !(k === "allOf" && x === "type" && s.type === "object"));
            if (others.length > 0) this.fail(`${pointer}/${escapePointer(others[0]!)}`, `"${others[0]}" next to "${k}" is not supported; move it into each branch of "${k}"`, others[0]);
            return this.#combinator(k, s[k], s, `${pointer}/${k}`, hint);
        }
        if ("const" in s || "enum" in s) return this.#literals(s, pointer, hint);

        const types = this.#types(s, pointer);
        const alts = types.map((t) => this.#typed(t, s, pointer, hint));
        return alts.length === 1 ? alts[0]! : this.define(hint, alts.join(" | "), pointer);
    }

    /** The types `s` allows: its "type", or what its keywords imply (an object for "properties"...), or all. */
    #types(s: Obj, pointer: string): JsonType[] {
        if ("type" in s) {
            const list = Array.isArray(s.type) ? s.type : [s.type];
            if (list.length === 0) this.fail(`${pointer}/type`, "is an empty list, which no value matches", "type");
            for (const t of list) {
                if (!TYPES.includes(t as JsonType)) this.fail(`${pointer}/type`, `has the unknown type ${JSON.stringify(t)} (the types are ${TYPES.join(", ")})`, "type");
            }
            const set = new Set(list as JsonType[]);
            if (set.has("number")) set.delete("integer"); // a number covers the integers
            return [...set];
        }
        const implied: JsonType[] = [];
        if (["properties", "required", "additionalProperties", "patternProperties"].some((k) => k in s)) implied.push("object");
        if (["items", "prefixItems", "additionalItems", "minItems", "maxItems"].some((k) => k in s)) implied.push("array");
        if (["minLength", "maxLength"].some((k) => k in s)) implied.push("string");
        if (["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"].some((k) => k in s)) implied.push("number");
        return implied.length > 0 ? implied : [...TYPES.filter((t) => t !== "integer")];
    }

    #typed(t: JsonType, s: Obj, pointer: string, hint: string): string {
        switch (t) {
            case "object": return this.#object(s, pointer, hint);
            case "array": return this.#array(s, pointer, hint);
            case "string": return this.#string(s, pointer);
            case "integer": return this.#integer(s, pointer, hint);
            case "number": return this.#number(s, pointer, hint);
            case "boolean": return this.prim("boolean");
            case "null": return this.prim("null");
        }
    }

    #literals(s: Obj, pointer: string, hint: string): string {
        const others = Object.keys(s).filter((k) => !ANNOTATIONS.has(k) && k !== "const" && k !== "enum" && k !== "type");
        if (others.length > 0) {
            this.fail(`${pointer}/${escapePointer(others[0]!)}`, `"${others[0]}" next to "${"const" in s ? "const" : "enum"}" is not supported; list only values that satisfy it`, others[0]);
        }
        let values: unknown[];
        if ("const" in s) {
            values = [s.const];
            if ("enum" in s) {
                if (!Array.isArray(s.enum)) this.fail(`${pointer}/enum`, "must be an array of values", "enum");
                if (!s.enum.some((v) => canonical(v) === canonical(s.const))) this.fail(pointer, `"const" is not among the "enum" values, so no value matches`, "const");
            }
        } else {
            if (!Array.isArray(s.enum)) this.fail(`${pointer}/enum`, "must be an array of values", "enum");
            values = s.enum;
        }
        const kw = "const" in s ? "const" : "enum";
        if ("type" in s) {
            const types = this.#types(s, pointer);
            values = values.filter((v) => {
                const t = typeOfValue(v)!;
                return types.includes(t) || (t === "integer" && types.includes("number"));
            });
        }
        const seen = new Set<string>();
        const alts: string[] = [];
        for (const v of values) {
            const key = canonical(v);
            if (seen.has(key)) continue;
            seen.add(key);
            alts.push(gbnfLiteral(JSON.stringify(v)));
        }
        if (alts.length === 0) this.fail(pointer, `no "${kw}" value has the schema's "type", so no value matches`, kw);
        return this.define(hint, alts.join(" | "), pointer);
    }

    #object(s: Obj, pointer: string, hint: string): string {
        const ws = this.prim("ws");
        if (s.properties !== undefined && !isObject(s.properties)) this.fail(`${pointer}/properties`, "must be an object of property schemas", "properties");
        const props = (s.properties ?? {}) as Obj;
        if (s.required !== undefined && (!Array.isArray(s.required) || s.required.some((r) => typeof r !== "string"))) {
            this.fail(`${pointer}/required`, "must be an array of property names", "required");
        }
        const required = [...new Set((s.required ?? []) as string[])];
        const names = [...new Set([...required, ...Object.keys(props)])];
        const addl = s.additionalProperties;
        if (addl !== undefined && typeof addl !== "boolean" && !isObject(addl)) this.fail(`${pointer}/additionalProperties`, "must be a boolean or a schema", "additionalProperties");
        let pattern: unknown;
        if (s.patternProperties !== undefined) {
            if (!isObject(s.patternProperties)) this.fail(`${pointer}/patternProperties`, "must be an object of schemas", "patternProperties");
            const entries = Object.entries(s.patternProperties);
            if (entries.length > 0) {
                if (entries.length !== 1 || !CATCH_ALL_PATTERNS.has(entries[0]![0]) || names.length > 0) {
                    this.fail(`${pointer}/patternProperties`, `only one catch-all pattern such as "^(.*)$" (a map, as typebox's Type.Record writes it), on an object without "properties", is supported`, "patternProperties");
                }
                pattern = entries[0]![1];
            }
        }

        if (names.length === 0) {
            // a map: any keys, values of one schema
            const valueSchema = pattern !== undefined ? pattern : addl === undefined ? true : addl;
            if (valueSchema === false) return this.define(`${hint}-empty`, `"{" ${ws} "}"`, pointer);
            const vp = pattern !== undefined ? `${pointer}/patternProperties/${escapePointer(Object.keys(s.patternProperties as Obj)[0]!)}` : `${pointer}/additionalProperties`;
            const value = this.visit(valueSchema, vp, `${hint}-value`);
            const str = this.prim("string");
            const kv = this.define(`${hint}-entry`, `${str} ${ws} ":" ${ws} ${value} ${ws}`, pointer);
            return this.define(hint, `"{" ${ws} (${kv} ("," ${ws} ${kv})*)? "}"`, pointer);
        }

        const kvs = new Map<string, string>();
        const present: string[] = []; // names in output order: required first, then the optional ones
        for (const name of [...required, ...Object.keys(props).filter((n) => !required.includes(n))]) {
            const has = Object.hasOwn(props, name);
            const ps = has ? props[name] : true;
            const pp = has ? `${pointer}/properties/${escapePointer(name)}` : `${pointer}/required`;
            if (ps === false) {
                if (required.includes(name)) this.fail(pp, `the required property "${name}" has the schema false, so no object matches`, "required");
                continue;
            }
            const value = this.visit(ps, pp, `${hint}-${name}`);
            kvs.set(name, this.define(`${hint}-${name}-kv`, `${gbnfLiteral(JSON.stringify(name))} ${ws} ":" ${ws} ${value} ${ws}`, pp));
            present.push(name);
        }
        const req = present.filter((n) => required.includes(n)).map((n) => kvs.get(n)!);
        const opt = present.filter((n) => !required.includes(n)).map((n) => kvs.get(n)!);
        let body: string;
        if (req.length > 0) {
            body = [req[0]!, ...req.slice(1).map((kv) => `"," ${ws} ${kv}`), ...opt.map((kv) => `("," ${ws} ${kv})?`)].join(" ");
        } else if (opt.length > 0) {
            // the first property present has no comma before it: one alternative per choice of the first
            const tails: string[] = [];
            let tail = "";
            for (let i = opt.length - 1; i >= 0; i--) {
                tails[i] = tail;
                tail = `("," ${ws} ${opt[i]})?${tail ? " " + tail : ""}`;
            }
            const first = opt.map((kv, i) => (tails[i] ? `${kv} ${this.define(`${hint}-rest`, tails[i]!, pointer)}` : kv));
            body = `(${first.join(" | ")})?`;
        } else {
            body = "";
        }
        return this.define(hint, `"{" ${ws} ${body} "}"`.replace(/ {2,}/g, " "), pointer);
    }

    #count(s: Obj, key: string, pointer: string): number | undefined {
        const v = s[key];
        if (v === undefined) return undefined;
        if (typeof v !== "number" || !Number.isInteger(v) || v < 0) this.fail(`${pointer}/${key}`, `must be an integer >= 0, got ${JSON.stringify(v)}`, key);
        return v;
    }

    #array(s: Obj, pointer: string, hint: string): string {
        const ws = this.prim("ws");
        const min = this.#count(s, "minItems", pointer) ?? 0;
        const max = this.#count(s, "maxItems", pointer) ?? Infinity;
        if (max < min) this.fail(pointer, `"maxItems" (${max}) is below "minItems" (${min}), so no array matches`, "maxItems");
        let tuple: unknown[] = [];
        let rest: unknown = true;
        let restPointer = `${pointer}/items`;
        if (s.prefixItems !== undefined) {
            if (!Array.isArray(s.prefixItems)) this.fail(`${pointer}/prefixItems`, "must be an array of schemas", "prefixItems");
            if (Array.isArray(s.items)) this.fail(`${pointer}/items`, `must be a schema (not an array) next to "prefixItems"`, "items");
            if ("additionalItems" in s) this.fail(`${pointer}/additionalItems`, `next to "prefixItems" is not supported; use "items" for the items after them`, "additionalItems");
            tuple = s.prefixItems;
            rest = s.items ?? true;
        } else if (Array.isArray(s.items)) {
            tuple = s.items;
            rest = s.additionalItems ?? true;
            restPointer = `${pointer}/additionalItems`;
        } else {
            if ("additionalItems" in s) this.fail(`${pointer}/additionalItems`, `applies only next to an "items" array (a tuple); remove it`, "additionalItems");
            rest = s.items ?? true;
        }
        const tuplePointer = s.prefixItems !== undefined ? `${pointer}/prefixItems` : `${pointer}/items`;
        const parts: string[] = [];
        // exactly min(tuple length, maxItems) tuple items, then as many more as minItems needs (up to maxItems)
        const k = Math.min(tuple.length, max);
        for (let i = 0; i < k; i++) parts.push(this.visit(tuple[i], `${tuplePointer}/${i}`, `${hint}-${i}`));
        let extraMin = Math.max(0, min - k);
        let extraMax = tuple.length > 0 ? extraMin : max - k;
        if (rest === false) {
            if (extraMin > 0) this.fail(restPointer, `is false, but "minItems" (${min}) needs more items than ${tuple.length > 0 ? "the tuple has" : "none"}`, "minItems");
            extraMax = 0;
        }
        // the repeated part counts every item after a first one (a comma before each); llama.cpp counts to 2000
        const countable = parts.length > 0 ? MAX_REPEAT : MAX_REPEAT + 1;
        if (extraMin > countable) this.fail(`${pointer}/minItems`, `(${min}) is more than the ${countable} items llama.cpp's grammar can count`, "minItems");
        if (extraMax !== Infinity) extraMax = Math.min(extraMax, countable);
        extraMin = Math.min(extraMin, extraMax);
        const items: string[] = parts.map((p, i) => (i === 0 ? `${p} ${ws}` : `"," ${ws} ${p} ${ws}`));
        let body = items.join(" ");
        if (extraMax > 0) {
            const item = this.visit(rest, restPointer, `${hint}-item`);
            const more = `("," ${ws} ${item} ${ws})`;
            if (parts.length > 0) {
                // every extra item follows a comma
                body += " " + repeat(more, extraMin, extraMax);
            } else {
                // a rule of its own: llama.cpp counts the rules a repetition creates inside a group against its limit
                const list = this.define(`${hint}-items`, `${item} ${ws} ${repeat(more, Math.max(0, extraMin - 1), extraMax - 1)}`.trim(), pointer);
                body = extraMin === 0 ? `${list}?` : list;
            }
        }
        return this.define(hint, `"[" ${ws} ${body} "]"`.replace(/ {2,}/g, " "), pointer);
    }

    #string(s: Obj, pointer: string): string {
        const min = this.#count(s, "minLength", pointer) ?? 0;
        const maxGiven = this.#count(s, "maxLength", pointer);
        if (maxGiven !== undefined && maxGiven < min) this.fail(pointer, `"maxLength" (${maxGiven}) is below "minLength" (${min}), so no string matches`, "maxLength");
        if (min > MAX_REPEAT) this.fail(`${pointer}/minLength`, `(${min}) is more than the ${MAX_REPEAT} characters llama.cpp's grammar can count`, "minLength");
        if (min === 0 && maxGiven === undefined) return this.prim("string");
        const max = maxGiven === undefined ? undefined : Math.min(maxGiven, MAX_REPEAT);
        const char = this.prim("char");
        const body = max === 0 ? `"\\"\\""` : `"\\"" ${char}{${min},${max ?? ""}} "\\""`;
        return this.define(`string-${min}-${max ?? "n"}`, body, pointer);
    }

    /** Integer bounds [lo, hi] (undefined: none) from minimum/maximum/exclusive*, rounded inwards. */
    #bounds(s: Obj, pointer: string, integer: boolean): { lo?: number; hi?: number; loEx: boolean; hiEx: boolean } {
        const num = (k: string): number | undefined => {
            const v = s[k];
            if (v === undefined) return undefined;
            if (typeof v === "boolean") this.fail(`${pointer}/${k}`, `as a boolean (JSON Schema draft 4) is not supported; give the bound as a number`, k);
            if (typeof v !== "number" || !Number.isFinite(v)) this.fail(`${pointer}/${k}`, `must be a finite number, got ${JSON.stringify(v)}`, k);
            const limit = integer ? MAX_INT_BOUND : MAX_NUMBER_BOUND;
            if (Math.abs(v) > limit) this.fail(`${pointer}/${k}`, `(${v}) is beyond ±${integer ? "2^53" : "10^9"}, the largest bound supported for ${integer ? "integers" : "numbers"}`, k);
            if (!integer && !Number.isInteger(v)) this.fail(`${pointer}/${k}`, `(${v}) is not an integer; bounds of a "number" schema must be integers (use "integer", or round the bound)`, k);
            return v;
        };
        const min = num("minimum"), max = num("maximum"), exMin = num("exclusiveMinimum"), exMax = num("exclusiveMaximum");
        let lo: number | undefined, hi: number | undefined, loEx = false, hiEx = false;
        if (min !== undefined) lo = min;
        if (exMin !== undefined && (lo === undefined || exMin >= lo)) (lo = exMin), (loEx = true);
        if (max !== undefined) hi = max;
        if (exMax !== undefined && (hi === undefined || exMax <= hi)) (hi = exMax), (hiEx = true);
        return { lo, hi, loEx, hiEx };
    }

    #integer(s: Obj, pointer: string, hint: string): string {
        const b = this.#bounds(s, pointer, true);
        if (b.lo === undefined && b.hi === undefined) return this.prim("integer");
        const lo = b.lo === undefined ? undefined : BigInt(b.loEx ? Math.floor(b.lo) + 1 : Math.ceil(b.lo));
        const hi = b.hi === undefined ? undefined : BigInt(b.hiEx ? Math.ceil(b.hi) - 1 : Math.floor(b.hi));
        if (lo !== undefined && hi !== undefined && lo > hi) this.fail(pointer, `no integer lies within its bounds`, "minimum");
        return this.define(`${hint}-int`, intRange(lo, hi), pointer);
    }

    #number(s: Obj, pointer: string, hint: string): string {
        const b = this.#bounds(s, pointer, false);
        if (b.lo === undefined && b.hi === undefined) return this.prim("number");
        // integers in the bounds, and k.f (f: 1 to 6 digits, the last not 0) strictly between k and k + 1
        const L = b.lo === undefined ? undefined : BigInt(b.lo);
        const H = b.hi === undefined ? undefined : BigInt(b.hi);
        const iLo = L === undefined ? undefined : b.loEx ? L + 1n : L;
        const iHi = H === undefined ? undefined : b.hiEx ? H - 1n : H;
        const alts: string[] = [];
        if (iLo === undefined || iHi === undefined || iLo <= iHi) alts.push(`(${intRange(iLo, iHi)})`);
        const frac = this.prim("frac-nz");
        const posLo = L === undefined || L < 0n ? 0n : L;
        const posHi = H === undefined ? undefined : H - 1n;
        if (posHi === undefined || posHi >= posLo) alts.push(`(${natRange(posLo, posHi)}) ${frac}`);
        const negLo = H === undefined || H > 0n ? 0n : -H;
        const negHi = L === undefined ? undefined : -L - 1n;
        if (negHi === undefined || negHi >= negLo) alts.push(`"-" (${natRange(negLo, negHi)}) ${frac}`);
        if (alts.length === 0) this.fail(pointer, "no number lies within its bounds", "minimum");
        return this.define(`${hint}-number`, alts.join(" | "), pointer);
    }

    #ref(ref: unknown, pointer: string): string {
        if (typeof ref !== "string") this.fail(pointer, "must be a string", "$ref");
        let target: { schema: unknown; pointer: string } | undefined;
        if (ref === "#" || ref.startsWith("#/")) {
            let node: unknown = this.root;
            let at = "";
            for (const raw of ref === "#" ? [] : ref.slice(2).split("/")) {
                const part = decodeURIComponent(raw).replace(/~1/g, "/").replace(/~0/g, "~");
                at += `/${escapePointer(part)}`;
                node = Array.isArray(node) ? node[Number(part)] : isObject(node) ? node[part] : undefined;
                if (node === undefined) this.fail(pointer, `"${ref}" points at nothing in this schema`, "$ref");
            }
            target = { schema: node, pointer: at };
        } else {
            target = this.#ids.get(ref) ?? this.#ids.get(ref.replace(/#$/, ""));
            if (!target) {
                this.fail(pointer, `"${ref}" is not a schema of this document: only "#", "#/..." pointers and the $id's of this schema's parts can be referenced ` +
                    `(put the referenced schema into "$defs")`, "$ref");
            }
        }
        const have = this.#refRules.get(target.schema);
        if (have) return have;
        const seg = target.pointer.split("/").pop() || "root";
        const name = this.#nameFor(`ref-${seg}`);
        this.#refRules.set(target.schema, name);
        this.pointers.set(name, target.pointer);
        const expr = this.visit(target.schema, target.pointer, seg);
        this.rules.set(name, expr);
        return name;
    }

    /** Reserves a name for a rule whose body comes later (a $ref target may refer to itself). */
    #nameFor(hint: string): string {
        const name = this.#name(hint);
        this.rules.set(name, "");
        return name;
    }

    #combinator(kind: "anyOf" | "oneOf" | "allOf", list: unknown, s: Obj, pointer: string, hint: string): string {
        if (!Array.isArray(list) || list.length === 0) this.fail(pointer, "must be a non-empty array of schemas", kind);
        if (kind === "allOf") return this.#allOf(list, s, pointer, hint);
        if (kind === "oneOf") {
            const kinds = list.map((b, i) => this.#kinds(b, `${pointer}/${i}`, new Set()));
            for (let i = 0; i < kinds.length; i++) {
                for (let j = i + 1; j < kinds.length; j++) {
                    if (overlaps(kinds[i]!, kinds[j]!)) {
                        this.fail(pointer, `branches ${i} and ${j} may match the same value, and "oneOf" then fails; use "anyOf", or make the branches differ in type or in const/enum values`, kind);
                    }
                }
            }
        }
        const alts: string[] = [];
        list.forEach((b, i) => {
            if (b !== false) alts.push(this.visit(b, `${pointer}/${i}`, `${hint}-${i}`));
        });
        if (alts.length === 0) this.fail(pointer, "has only false branches, which no value matches", kind);
        return alts.length === 1 ? alts[0]! : this.define(hint, alts.join(" | "), pointer);
    }

    /** What values a schema may match, coarsely: the set of JSON types, or the set of literal values. */
    #kinds(s: unknown, pointer: string, seen: Set<unknown>): Kinds {
        const all: Kinds = { types: new Set(TYPES.filter((t) => t !== "integer")) };
        if (!isObject(s) || seen.has(s)) return s === false ? { types: new Set() } : all;
        seen.add(s);
        if ("const" in s) return { values: new Set([canonical(s.const)]) };
        if (Array.isArray(s.enum)) return { values: new Set(s.enum.map(canonical)) };
        if (typeof s.$ref === "string") {
            try {
                const ref = s.$ref;
                const node = ref === "#" ? this.root : ref.startsWith("#/") ? ref.slice(2).split("/").reduce<unknown>((n, p) => (isObject(n) ? n[decodeURIComponent(p).replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), this.root) : this.#ids.get(ref)?.schema;
                return node === undefined ? all : this.#kinds(node, pointer, seen);
            } catch {
                return all;
            }
        }
        if (Array.isArray(s.anyOf) || Array.isArray(s.oneOf)) {
            const parts = ((s.anyOf ?? s.oneOf) as unknown[]).map((b) => this.#kinds(b, pointer, seen));
            return parts.reduce(union, { types: new Set() });
        }
        if ("type" in s || Object.keys(s).some((k) => SUPPORTED.has(k) && k !== "allOf")) {
            try {
                const types = new Set(this.#types(s, pointer).map((t) => (t === "integer" ? "number" : t)));
                return { types };
            } catch {
                return all;
            }
        }
        return all;
    }

    #allOf(list: unknown[], s: Obj, pointer: string, hint: string): string {
        if (list.length === 1) return this.visit(list[0], `${pointer}/0`, hint);
        // object branches (typebox's Type.Intersect): merge their properties and required lists
        const properties: Obj = {};
        const required: string[] = [];
        list.forEach((b, i) => {
            const bp = `${pointer}/${i}`;
            const ok = isObject(b) && (b.type === undefined || b.type === "object") && Object.keys(b).every((k) => ANNOTATIONS.has(k) || ["type", "properties", "required"].includes(k)) &&
                (b.properties !== undefined || b.required !== undefined);
            if (!ok) this.fail(bp, `"allOf" is supported with one branch, or with object branches that have only "type": "object", "properties" and "required" (they are merged)`, "allOf");
            const props = (b.properties ?? {}) as Obj;
            if (!isObject(props)) this.fail(`${bp}/properties`, "must be an object of property schemas", "properties");
            for (const [k, v] of Object.entries(props)) {
                if (Object.hasOwn(properties, k) && canonical(properties[k]) !== canonical(v)) {
                    this.fail(`${bp}/properties/${escapePointer(k)}`, `the property "${k}" has different schemas in two "allOf" branches; merge them into one`, "allOf");
                }
                properties[k] = v;
            }
            if (b.required !== undefined) {
                if (!Array.isArray(b.required)) this.fail(`${bp}/required`, "must be an array of property names", "required");
                required.push(...(b.required as string[]));
            }
        });
        void s;
        return this.#object({ type: "object", properties, required: [...new Set(required)] }, pointer, hint);
    }

    grammar(): string {
        const ws = this.prim("ws");
        const value = this.visit(this.root, "", "value");
        const lines = [`root ::= ${ws} ${value}`];
        for (const [name, body] of this.rules) lines.push(`${name} ::= ${body}`);
        return lines.join("\n") + "\n";
    }
}

interface Kinds {
    types?: Set<string>;
    values?: Set<string>;
}
function valueType(v: string): string {
    const t = typeOfValue(JSON.parse(v))!;
    return t === "integer" ? "number" : t;
}
function overlaps(a: Kinds, b: Kinds): boolean {
    if (a.values && b.values) return [...a.values].some((v) => b.values!.has(v));
    if (a.values && b.types) return [...a.values].some((v) => b.types!.has(valueType(v)));
    if (a.types && b.values) return overlaps(b, a);
    return [...a.types!].some((t) => b.types!.has(t));
}
function union(a: Kinds, b: Kinds): Kinds {
    if (a.values && b.values) return { values: new Set([...a.values, ...b.values]) };
    const types = new Set<string>([...(a.types ?? []), ...(b.types ?? [])]);
    for (const v of [...(a.values ?? []), ...(b.values ?? [])]) types.add(valueType(v));
    return { types };
}

/** `item` repeated min..max times (max: Infinity for no bound; at most llama.cpp's repetition limit). */
function repeat(item: string, min: number, max: number): string {
    if (max === 0) return "";
    if (min === 0 && max === 1) return `${item}?`;
    if (max === Infinity || max > MAX_REPEAT) return min === 0 ? `${item}*` : min === 1 ? `${item}+` : `${item}{${min},}`;
    return min === max ? `${item}{${min}}` : `${item}{${min},${max}}`;
}

/** Non-negative integers in [lo, hi] (hi undefined: up to 16 digits) as decimal text without leading zeros. */
function natRange(lo: bigint, hi: bigint | undefined): string {
    const cap = 10n ** BigInt(INT_DIGITS) - 1n;
    const top = hi ?? (lo > cap ? 10n ** BigInt(lo.toString().length) - 1n : cap);
    const alts: string[] = [];
    const loLen = lo.toString().length, hiLen = top.toString().length;
    for (let len = loLen; len <= hiLen; len++) {
        const a = len === loLen ? lo : 10n ** BigInt(len - 1);
        const b = len === hiLen ? top : 10n ** BigInt(len) - 1n;
        alts.push(sameLength(a.toString(), b.toString()));
    }
    return alts.join(" | ");
}

/** Digit strings of one length from a to b (a <= b), leading zeros allowed (the caller fixes the first digit). */
function sameLength(a: string, b: string): string {
    if (a === b) return `"${a}"`;
    const n = a.length;
    if (n === 1) return `[${a}-${b}]`;
    if (a[0] === b[0]) return `"${a[0]}" (${sameLength(a.slice(1), b.slice(1))})`;
    const zeros = "0".repeat(n - 1), nines = "9".repeat(n - 1);
    const lowFull = a.slice(1) === zeros, highFull = b.slice(1) === nines;
    const d1 = Number(a[0]), d2 = Number(b[0]);
    const parts: string[] = [];
    if (!lowFull) parts.push(`"${d1}" (${sameLength(a.slice(1), nines)})`);
    const from = lowFull ? d1 : d1 + 1, to = highFull ? d2 : d2 - 1;
    if (from <= to) parts.push(`[${from}-${to}] [0-9]{${n - 1}}`);
    if (!highFull) parts.push(`"${d2}" (${sameLength(zeros, b.slice(1))})`);
    return parts.length === 1 ? parts[0]! : `(${parts.join(" | ")})`;
}

/** Integers in [lo, hi] (either may be undefined: no bound) as JSON text. */
function intRange(lo: bigint | undefined, hi: bigint | undefined): string {
    const alts: string[] = [];
    if (lo === undefined || lo < 0n) {
        const absLo = hi !== undefined && hi < 0n ? -hi : 1n;
        alts.push(`"-" (${natRange(absLo, lo === undefined ? undefined : -lo)})`);
    }
    if (hi === undefined || hi >= 0n) {
        const from = lo === undefined || lo < 0n ? 0n : lo;
        alts.push(natRange(from, hi));
    }
    return alts.join(" | ");
}

const cache = new Map<string, string>();
const CACHE_SIZE = 64;

/**
 * The GBNF grammar (start rule "root") whose complete documents are the JSON texts this library generates for
 * `schema` (see the module comment: every one validates against it). Throws JsonSchemaError (a RangeError,
 * ERR_INVALID_ARGUMENT) for an unsupported keyword or a broken or unsatisfiable schema, naming where; a schema
 * that is not an object or a boolean is a PhiTypeError. Results are cached by the schema's JSON text.
 */
export function jsonSchemaToGbnf(schema: unknown): string {
    if (typeof schema !== "boolean" && !isObject(schema)) {
        throw new PhiTypeError(`Expected "jsonSchema" to be a JSON Schema (an object or a boolean), got ${schema === null ? "null" : Array.isArray(schema) ? "an array" : typeof schema}`);
    }
    const bad = notJson(schema);
    if (bad !== undefined) {
        throw new JsonSchemaError(`JSON Schema ${showPointer(bad)}: is not plain JSON (undefined, a function, NaN or Infinity, a class instance, or nested too deep); pass JSON values only`, bad);
    }
    const key = JSON.stringify(schema);
    const hit = cache.get(key);
    if (hit !== undefined) {
        cache.delete(key);
        cache.set(key, hit);
        return hit;
    }
    const c = new Converter(JSON.parse(key) as Schema);
    const text = c.grammar();
    try {
        checkGbnf(text);
    } catch (err) {
        if (!(err instanceof GrammarError)) throw err;
        const rule = (err.details?.["rule"] as string | undefined) ?? "";
        const where = c.pointers.get(rule) ?? c.pointers.get(rule.replace(/_\d+$/, "")) ?? "";
        if (err.kind === "left-recursion" || err.kind === "hidden-left-recursion") {
            throw new JsonSchemaError(`JSON Schema ${showPointer(where)}: refers to itself ($ref) before any text, so it has no end; nest the reference inside an object or array`, where, "$ref");
        }
        if (err.kind === "unfinishable") {
            throw new JsonSchemaError(`JSON Schema ${showPointer(where)}: every value of it must contain another one ($ref through required properties or minItems), so none is finite; make the recursion optional`, where, "$ref");
        }
        if (err.kind === "limit") throw new JsonSchemaError(`JSON Schema: its grammar is too large (${err.message.replace(/^GBNF[^:]*: /, "")}); simplify the schema`, where);
        throw err; // a bug of the converter: its grammar should always be valid
    }
    cache.set(key, text);
    if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value!);
    return text;
}
