/**
 * GemstoneIDs as 64-bit unsigned `bigint`s, laid out exactly as RusticAI's `core/utils/gemstone_id.py`:
 *
 *   bits 61–63 priority (0 URGENT … 4 NORMAL … 7 LOWEST) | bits 22–60 ms since 2023-01-01 UTC (39 bits)
 *   | bits 20–21 always 0 | bits 12–19 machine id (0–255) | bits 0–11 sequence (per generator and ms)
 *
 * Every NORMAL id is ≥ 2^63, so ids never pass through a JS number here.
 */
import { PhiRangeError, PhiTypeError } from "../../errors.js";
import { GEMSTONE_EPOCH_MS, Priority } from "../ids.js";

export { GEMSTONE_EPOCH_MS, Priority };

const PRIORITY_SHIFT = 61n;
const TIMESTAMP_SHIFT = 22n;
const MACHINE_SHIFT = 12n;
const TIMESTAMP_MASK = (1n << (PRIORITY_SHIFT - TIMESTAMP_SHIFT)) - 1n;
/** Python's `from_int` reads 10 bits of machine id and then rejects values over 255. */
const MACHINE_READ_MASK = 0x3ffn;
const MAX_MACHINE_ID = 255;
const MAX_SEQUENCE = 4095;
const EPOCH = BigInt(GEMSTONE_EPOCH_MS);
/** The last millisecond the 39-bit timestamp field can hold (2040-06-04). */
export const GEMSTONE_MAX_TIMESTAMP_MS = GEMSTONE_EPOCH_MS + Number(TIMESTAMP_MASK);

/** The fields of a GemstoneID. */
export interface GemstoneParts {
    priority: Priority;
    /** Milliseconds since the Unix epoch (RusticAI's `message.timestamp`). */
    timestamp: number;
    machineId: number;
    sequence: number;
}

function checkInt(what: string, value: unknown, min: number, max: number): number {
    if (typeof value !== "number" || !Number.isInteger(value)) throw new PhiTypeError(`${what} must be an integer; got ${String(value)}`);
    if (value < min || value > max) throw new PhiRangeError(`${what} must be from ${min} to ${max}; got ${value}`);
    return value;
}

/** Packs the parts into an id, as `GemstoneID.to_int()`. Throws a RangeError for a field out of range. */
export function gemstoneId(parts: GemstoneParts): bigint {
    const priority = checkInt("priority", parts.priority, 0, 7);
    const timestamp = checkInt("timestamp", parts.timestamp, GEMSTONE_EPOCH_MS, GEMSTONE_MAX_TIMESTAMP_MS);
    const machineId = checkInt("machineId", parts.machineId, 0, MAX_MACHINE_ID);
    const sequence = checkInt("sequence", parts.sequence, 0, MAX_SEQUENCE);
    return (BigInt(priority) << PRIORITY_SHIFT)
        | ((BigInt(timestamp) - EPOCH) << TIMESTAMP_SHIFT)
        | (BigInt(machineId) << MACHINE_SHIFT)
        | BigInt(sequence);
}

/**
 * The parts of an id, as `GemstoneID.from_int()`. Like Python, only the low 64 bits count (a negative or
 * too-large integer is read modulo 2^64); an id whose machine field is over 255 is rejected (RangeError).
 */
export function gemstoneParts(id: bigint): GemstoneParts {
    if (typeof id !== "bigint") throw new PhiTypeError(`a GemstoneID must be a bigint; got ${typeof id}`);
    const v = BigInt.asUintN(64, id);
    const machineId = Number((v >> MACHINE_SHIFT) & MACHINE_READ_MASK);
    if (machineId > MAX_MACHINE_ID) {
        throw new PhiRangeError(`${id} is not a GemstoneID: its machine id field is ${machineId} (at most ${MAX_MACHINE_ID})`);
    }
    return {
        priority: Number(v >> PRIORITY_SHIFT) as Priority,
        timestamp: Number(((v >> TIMESTAMP_SHIFT) & TIMESTAMP_MASK) + EPOCH),
        machineId,
        sequence: Number(v & 0xfffn),
    };
}

/**
 * The id Python keeps after reading `id` (`GemstoneID.from_int(id).to_int()`): the low 64 bits. Throws a
 * RangeError where Python's `from_int` raises.
 */
export function normalizeGemstoneId(id: bigint): bigint {
    gemstoneParts(id);
    return BigInt.asUintN(64, id);
}

/** The smallest id of a millisecond and priority (for range scans). */
export function firstIdOf(priority: Priority, timestamp: number): bigint {
    return gemstoneId({ priority, timestamp, machineId: 0, sequence: 0 });
}

/**
 * Makes ids for one machine id, as `GemstoneGenerator.get_id`: sequence 0 for the first id of a millisecond,
 * +1 for each further one. Where Python waits for the next millisecond (4096 ids in one, or a clock that went
 * back), this one never blocks: it takes the next millisecond itself, so ids stay unique and increasing.
 */
export class GemstoneIdGenerator {
    readonly machineId: number;
    #last = -1;
    #sequence = 0;
    readonly #now: () => number;

    /** `now` is for tests (default Date.now). */
    constructor(machineId: number, now: () => number = Date.now) {
        this.machineId = checkInt("GemstoneIdGenerator: machineId", machineId, 0, MAX_MACHINE_ID);
        if (typeof now !== "function") throw new PhiTypeError(`GemstoneIdGenerator: now must be a function; got ${typeof now}`);
        this.#now = now;
    }

    /** A new id of this priority (default NORMAL). */
    next(priority: Priority = Priority.NORMAL): bigint {
        checkInt("priority", priority, 0, 7);
        let timestamp = this.#now();
        if (timestamp <= this.#last) {
            timestamp = this.#last;
            if (this.#sequence === MAX_SEQUENCE) {
                timestamp += 1;
                this.#sequence = 0;
            } else {
                this.#sequence++;
            }
        } else {
            this.#sequence = 0;
        }
        this.#last = timestamp;
        return gemstoneId({ priority, timestamp, machineId: this.machineId, sequence: this.#sequence });
    }
}
