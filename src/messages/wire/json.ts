/**
 * JSON as RusticAI's Python writes and reads it, without losing a bit:
 * - parse (lossless-json): integers beyond 2^53 become `bigint`, other integers `number`; numbers written as
 *   floats (`1.0`, `1e+16`) stay floats when written back; object keys keep their order, even keys like "1"
 *   that a JS object would move to the front;
 * - stringify: compact (`,` and `:` with no spaces), strings escaped like pydantic's serializer (non-ASCII
 *   as is), floats formatted like pydantic (`1796179696204.0`, `1e+16`, `1e-7`, `0.00001`), bigints bare.
 * So `stringifyPyJson(parsePyJson(text)) === text` for everything Python's `model_dump_json` writes.
 */
import { parse as losslessParse } from "lossless-json";

/** A JSON value as parsed here: integers beyond 2^53 are bigints. */
export type PyJson = null | boolean | number | bigint | string | PyJson[] | PyJsonObject;
export interface PyJsonObject { [key: string]: PyJson }

/** Integer-valued numbers that were written as floats, per container (so `1.0` is written back as `1.0`). */
const floatKeys = new WeakMap<object, Set<string>>();
/** The key order of objects whose keys a JS object reorders (integer-like keys), as written. */
const keyOrders = new WeakMap<object, string[]>();

const INTEGER_TEXT = /^-?\d+$/;
const INDEX_KEY = /"(?:0|[1-9]\d*)"\s*:/;

/**
 * Parses JSON text. Throws a SyntaxError for text that is not JSON. A duplicate key keeps its first place and
 * its last value, as Python's `json.loads` does.
 */
export function parsePyJson(text: string): PyJson {
    return parseFast(text) ?? parseLossless(text);
}

/** A JSON number token, exactly (no leading zeros, digits after a point, an exponent with digits). */
const NUMBER_TEXT = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

/** Characters a number token is made of (anything else ends it). */
function isNumberChar(c: number): boolean {
    return (c >= 48 && c <= 57) || c === 46 || c === 101 || c === 69 || c === 43 || c === 45; // 0-9 . e E + -
}

/**
 * parsePyJson by JSON.parse (about twice as fast as lossless-json): the numbers JSON.parse would get wrong
 * (integers beyond 2^53, `-0`, floats, which carry a float mark) are first rewritten as marked strings, then
 * turned back into what parseLossless makes of them. Returns undefined, and the lossless parser decides, for
 * anything else: text JSON.parse rejects (so errors read the same), a number token that is not JSON, or text
 * where a marked string or a `__proto__` key could mean something else.
 */
function parseFast(text: string): PyJson | undefined {
    if (text.includes("\\u0001") || text.includes("__proto__")) return undefined;
    const n = text.length;
    let out = "";
    let last = 0;
    let i = 0;
    while (i < n) {
        const c = text.charCodeAt(i);
        if (c === 34 /* " */) {
            // to the closing quote: one not escaped (preceded by an even number of backslashes)
            for (;;) {
                const q = text.indexOf("\"", i + 1);
                if (q < 0) return undefined;
                let b = q - 1;
                while (text.charCodeAt(b) === 92 /* \ */) b--;
                i = q;
                if ((q - 1 - b) % 2 === 0) break;
            }
            i++;
        } else if (c === 45 || (c >= 48 && c <= 57)) {
            const start = i;
            while (i < n && isNumberChar(text.charCodeAt(i))) i++;
            const token = text.slice(start, i);
            // a safe integer JSON.parse reads right: as is
            if (token.length < 16 && INTEGER_TEXT.test(token) && !token.startsWith("-0") && !(token.length > 1 && token.startsWith("0"))) continue;
            if (!NUMBER_TEXT.test(token)) return undefined;
            out += text.slice(last, start) + "\"\\u0001" + token + "\"";
            last = i;
        } else {
            i++;
        }
    }
    let value: unknown;
    try {
        value = JSON.parse(last === 0 ? text : out + text.slice(last));
    } catch {
        return undefined;
    }
    if (last > 0) {
        if (typeof value === "string") return value.charCodeAt(0) === 1 ? unmark(value).value : value;
        unmarkAll(value as PyJsonObject | PyJson[]);
    }
    if (INDEX_KEY.test(text)) recordKeyOrders(text, value as PyJson);
    return value as PyJson;
}

/** A marked number's value, as parseNumberText makes it; `float`: written as a float. */
function unmark(s: string): { value: number | bigint; float: boolean } {
    const n = parseNumberText(s.slice(1));
    return n instanceof FloatText ? { value: n.value, float: true } : { value: n, float: false };
}

/** Turns every marked string under `container` back into its number (an array's slots by index). */
function unmarkAll(container: PyJsonObject | PyJson[]): void {
    const slots = container as Record<string | number, PyJson>;
    for (const k of Array.isArray(container) ? container.keys() : Object.keys(container)) {
        const v = slots[k];
        if (typeof v === "string") {
            if (v.charCodeAt(0) !== 1) continue;
            const u = unmark(v);
            slots[k] = u.value;
            if (u.float && Number.isInteger(u.value)) markFloat(container, k);
        } else if (v !== null && typeof v === "object") {
            unmarkAll(v as PyJsonObject | PyJson[]);
        }
    }
}

/** parsePyJson by lossless-json: the reference, and what decides whatever parseFast leaves to it. */
export function parseLossless(text: string): PyJson {
    const value = losslessParse(text, undefined, {
        parseNumber: parseNumberText,
        onDuplicateKey: ({ newValue }) => newValue,
    }) as PyJson | FloatText;
    if (value instanceof FloatText) return value.value;
    markFloats(value);
    if (INDEX_KEY.test(text)) recordKeyOrders(text, value);
    return value;
}

function parseNumberText(text: string): number | bigint | FloatText {
    if (INTEGER_TEXT.test(text)) {
        const n = Number(text);
        if (n === 0) return 0; // "-0" is the integer 0
        return Number.isSafeInteger(n) ? n : BigInt(text);
    }
    return new FloatText(Number(text));
}

/** Marks a float during parsing; replaced by its number (and a float mark on its container) right after. */
class FloatText {
    constructor(readonly value: number) {}
}

function markFloats(root: PyJson): void {
    const visit = (container: Record<string, unknown> | unknown[]): void => {
        const entries: [string, unknown][] = Array.isArray(container)
            ? container.map((v, i) => [String(i), v])
            : Object.entries(container);
        for (const [k, v] of entries) {
            if (v instanceof FloatText) {
                (container as Record<string, unknown>)[k] = v.value;
                if (Number.isInteger(v.value)) markFloat(container, Array.isArray(container) ? Number(k) : k);
            } else if (v !== null && typeof v === "object") {
                visit(v as Record<string, unknown>);
            }
        }
    };
    if (root !== null && typeof root === "object") visit(root as Record<string, unknown>);
}

/**
 * Says that `container[key]` is a float: an integer value there is written with a fraction (`1.0`), as Python
 * writes a float. Parsing does this by itself for floats it reads.
 */
export function markFloat(container: object, key: string | number): void {
    let set = floatKeys.get(container);
    if (!set) floatKeys.set(container, (set = new Set()));
    set.add(String(key));
}

/** Whether an integral number at `container[key]` is written as a float. */
export function isMarkedFloat(container: object, key: string): boolean {
    return floatKeys.get(container)?.has(key) ?? false;
}

/**
 * Finds, for each object of `root`, the order its keys had in `text`, and records it where a JS object would
 * iterate them differently. Only runs when the text has an integer-like key.
 */
function recordKeyOrders(text: string, root: PyJson): void {
    let i = 0;
    const ws = () => { while (i < text.length && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")) i++; };
    const str = (): string => {
        const start = i;
        i++;
        while (text[i] !== "\"") i += text[i] === "\\" ? 2 : 1;
        i++;
        return JSON.parse(text.slice(start, i)) as string;
    };
    const value = (node: PyJson): void => {
        ws();
        const c = text[i];
        if (c === "{") {
            i++;
            const keys: string[] = [];
            ws();
            while (text[i] !== "}") {
                if (text[i] === ",") { i++; ws(); }
                const k = str();
                ws();
                i++; // :
                if (!keys.includes(k)) keys.push(k);
                value((node as PyJsonObject)[k] as PyJson);
                ws();
            }
            i++;
            const natural = Object.keys(node as object);
            if (natural.some((k, j) => k !== keys[j])) keyOrders.set(node as object, keys);
        } else if (c === "[") {
            i++;
            let j = 0;
            ws();
            while (text[i] !== "]") {
                if (text[i] === ",") { i++; ws(); }
                value((node as PyJson[])[j++] as PyJson);
                ws();
            }
            i++;
        } else if (c === "\"") {
            str();
        } else {
            while (i < text.length && !",}] \t\n\r".includes(text[i]!)) i++;
        }
    };
    value(root);
}

/** The keys of `obj` in the order they are written: the order they were read in, then any added since. */
function orderedKeys(obj: object): string[] {
    const natural = Object.keys(obj);
    const order = keyOrders.get(obj);
    if (!order) return natural;
    const present = new Set(natural);
    const out = order.filter((k) => present.has(k));
    const seen = new Set(out);
    for (const k of natural) if (!seen.has(k)) out.push(k);
    return out;
}

/**
 * Formats a float as pydantic does: the shortest digits that read back the same number; positional from 1e-5 up
 * to below 1e16 (an integral value gets `.0`), otherwise scientific (`1e+16`, `1.5e-7`); NaN and ±Infinity as null.
 */
export function formatPyFloat(value: number): string {
    if (!Number.isFinite(value)) return "null";
    if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
    const sign = value < 0 ? "-" : "";
    const [mantissa, exp] = Math.abs(value).toExponential().split("e") as [string, string];
    const digits = mantissa.replace(".", "");
    const e = Number(exp);
    if (e >= -5 && e < 16) {
        if (e >= 0) {
            const int = digits.length > e + 1 ? digits.slice(0, e + 1) : digits.padEnd(e + 1, "0");
            const frac = digits.length > e + 1 ? digits.slice(e + 1) : "0";
            return `${sign}${int}.${frac}`;
        }
        return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
    }
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${e < 0 ? "-" : "+"}${Math.abs(e)}`;
}

/**
 * Writes a value as compact JSON the way pydantic's `model_dump_json` does. Integer numbers are written as
 * integers unless marked as floats (see markFloat); other numbers as Python floats; bigints bare; `undefined`
 * object fields are left out. Throws a TypeError for values JSON cannot carry.
 */
export function stringifyPyJson(value: unknown): string {
    const out: string[] = [];
    write(value, out, new Set(), false);
    return out.join("");
}

function write(value: unknown, out: string[], stack: Set<object>, asFloat: boolean): void {
    switch (typeof value) {
        case "string":
            out.push(JSON.stringify(value));
            return;
        case "boolean":
            out.push(value ? "true" : "false");
            return;
        case "bigint":
            out.push(value.toString());
            return;
        case "number":
            out.push(Number.isInteger(value) && !asFloat && !Object.is(value, -0) && Math.abs(value) <= Number.MAX_SAFE_INTEGER
                ? String(value) : formatPyFloat(value));
            return;
        case "object": {
            if (value === null) {
                out.push("null");
                return;
            }
            if (stack.has(value)) throw new TypeError("stringifyPyJson: the value refers back to itself (a cycle cannot be written as JSON)");
            const toJSON = (value as { toJSON?: () => unknown }).toJSON;
            if (typeof toJSON === "function" && !Array.isArray(value)) {
                write(toJSON.call(value), out, stack, false);
                return;
            }
            stack.add(value);
            if (Array.isArray(value)) {
                out.push("[");
                value.forEach((item, i) => {
                    if (i > 0) out.push(",");
                    write(item === undefined ? null : item, out, stack, isMarkedFloat(value, String(i)));
                });
                out.push("]");
            } else {
                out.push("{");
                let first = true;
                for (const k of orderedKeys(value)) {
                    const v = (value as Record<string, unknown>)[k];
                    if (v === undefined || typeof v === "function" || typeof v === "symbol") continue;
                    if (!first) out.push(",");
                    first = false;
                    out.push(JSON.stringify(k), ":");
                    write(v, out, stack, isMarkedFloat(value, k));
                }
                out.push("}");
            }
            stack.delete(value);
            return;
        }
        default:
            throw new TypeError(`stringifyPyJson: a ${typeof value} cannot be written as JSON`);
    }
}

/**
 * A deep copy of a parsed value that keeps the float marks and key orders (structuredClone would drop them).
 */
export function clonePyJson<T>(value: T): T {
    if (value === null || typeof value !== "object") return value;
    if (Array.isArray(value)) {
        const copy = value.map((v) => clonePyJson(v));
        copyMarks(value, copy);
        return copy as T;
    }
    const copy: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) copy[k] = clonePyJson(v);
    copyMarks(value, copy);
    return copy as T;
}

function copyMarks(from: object, to: object): void {
    copyJsonMarks(from, to);
}

/**
 * Gives `to` the float marks and key order of `from` (a container rebuilt from it), with keys renamed by `mapKey`.
 */
export function copyJsonMarks(from: object, to: object, mapKey: (key: string) => string = (k) => k): void {
    const floats = floatKeys.get(from);
    if (floats) floatKeys.set(to, new Set([...floats].map(mapKey)));
    const order = keyOrders.get(from);
    if (order) keyOrders.set(to, order.map(mapKey));
}
