/** Payloads must be plain JSON so any backend (and a Python guild) can carry them. */
import { PhiTypeError } from "../errors.js";

/**
 * Throws a TypeError naming the first part of `value` that is not plain JSON data: functions,
 * symbols, bigints, non-finite numbers, class instances (Date, Map, ...), cycles. `undefined`
 * object fields are allowed (JSON drops them), `undefined` array items are not.
 */
export function assertJsonPayload(value: unknown, path = "payload"): void {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
        throw bad(path, value, "must be an object (a JSON dictionary)");
    }
    visit(value, path, new Set());
}

function visit(value: unknown, path: string, stack: Set<object>): void {
    switch (typeof value) {
        case "string":
        case "boolean":
            return;
        case "number":
            if (!Number.isFinite(value)) throw bad(path, value, "must be a finite number (JSON has no NaN or Infinity)");
            return;
        case "object": {
            if (value === null) return;
            if (stack.has(value)) throw bad(path, value, "refers back to itself (a cycle cannot be sent as JSON)");
            const proto = Object.getPrototypeOf(value);
            if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) {
                throw bad(path, value, `is a ${(value as object).constructor?.name ?? "class"} instance; send plain objects, arrays, strings, numbers, booleans and null`);
            }
            stack.add(value);
            if (Array.isArray(value)) {
                value.forEach((item, i) => {
                    if (item === undefined) throw bad(`${path}[${i}]`, item, "is undefined (use null)");
                    visit(item, `${path}[${i}]`, stack);
                });
            } else {
                for (const [k, v] of Object.entries(value)) {
                    if (v === undefined) continue;
                    visit(v, /^[A-Za-z_$][\w$]*$/.test(k) ? `${path}.${k}` : `${path}[${JSON.stringify(k)}]`, stack);
                }
            }
            stack.delete(value);
            return;
        }
        default:
            throw bad(path, value, `is a ${typeof value}, which JSON cannot carry`);
    }
}

function bad(path: string, value: unknown, why: string): TypeError {
    void value;
    return new PhiTypeError(`${path} ${why}`);
}
