/**
 * Message ids and priorities, laid out like RusticAI's `GemstoneID`: a 64-bit unsigned integer
 *   priority (3 bits) | ms since 2023-01-01 UTC (41 bits) | machine id (8 bits) | sequence (12 bits)
 * so ids from a Python guild and from here sort the same way. A 64-bit integer does not fit a JS
 * number, so ids travel as decimal strings inside TypeScript (see `messageToJSON` / `parseMessage`
 * for the wire form, where they are bare JSON integers as in Python).
 */
import { PhiRangeError, PhiTypeError } from "../errors.js";

/** RusticAI's `Priority` (lower = more urgent). */
export const Priority = {
    URGENT: 0,
    IMPORTANT: 1,
    HIGH: 2,
    ABOVE_NORMAL: 3,
    NORMAL: 4,
    LOW: 5,
    VERY_LOW: 6,
    LOWEST: 7,
} as const;
export type Priority = (typeof Priority)[keyof typeof Priority];

/** 2023-01-01T00:00:00Z in ms, GemstoneID's epoch. */
export const GEMSTONE_EPOCH_MS = Date.UTC(2023, 0, 1);

const PRIORITY_SHIFT = 61n;
const TIMESTAMP_SHIFT = 22n;
const MACHINE_SHIFT = 12n;
const SEQUENCE_MASK = 0xfffn;
const MACHINE_MASK = 0xffn;
const PRIORITY_MASK = 0x7n;
const TIMESTAMP_MASK = (1n << (PRIORITY_SHIFT - TIMESTAMP_SHIFT)) - 1n;

/** The fields of a GemstoneID. */
export interface GemstoneIdParts {
    priority: Priority;
    /** ms since the Unix epoch. */
    timestamp: number;
    machineId: number;
    sequence: number;
}

function assertPriority(priority: unknown): asserts priority is Priority {
    if (typeof priority !== "number" || !Number.isInteger(priority) || priority < 0 || priority > 7) {
        throw new PhiRangeError(`priority must be an integer from 0 (URGENT) to 7 (LOWEST); got ${String(priority)}`);
    }
}

/** Packs the parts into the id's decimal string. */
export function encodeGemstoneId(parts: GemstoneIdParts): string {
    assertPriority(parts.priority);
    const value = (BigInt(parts.priority) << PRIORITY_SHIFT)
        | ((BigInt(parts.timestamp - GEMSTONE_EPOCH_MS) & TIMESTAMP_MASK) << TIMESTAMP_SHIFT)
        | ((BigInt(parts.machineId) & MACHINE_MASK) << MACHINE_SHIFT)
        | (BigInt(parts.sequence) & SEQUENCE_MASK);
    return value.toString();
}

/** Unpacks an id (decimal string, bigint or safe integer). */
export function decodeGemstoneId(id: string | bigint | number): GemstoneIdParts {
    const value = toBigIntId(id, "id");
    return {
        priority: Number((value >> PRIORITY_SHIFT) & PRIORITY_MASK) as Priority,
        timestamp: Number((value >> TIMESTAMP_SHIFT) & TIMESTAMP_MASK) + GEMSTONE_EPOCH_MS,
        machineId: Number((value >> MACHINE_SHIFT) & MACHINE_MASK),
        sequence: Number(value & SEQUENCE_MASK),
    };
}

/** Orders two ids as RusticAI does (priority, then time, then machine, then sequence). */
export function compareMessageIds(a: string | bigint, b: string | bigint): number {
    const x = toBigIntId(a, "a");
    const y = toBigIntId(b, "b");
    return x < y ? -1 : x > y ? 1 : 0;
}

function toBigIntId(id: string | bigint | number, name: string): bigint {
    if (typeof id === "bigint" && id >= 0n && id < 1n << 64n) return id;
    if (typeof id === "number" && Number.isSafeInteger(id) && id >= 0) return BigInt(id);
    if (typeof id === "string" && /^\d{1,20}$/.test(id) && BigInt(id) < 1n << 64n) return BigInt(id);
    throw new PhiTypeError(`${name} must be a message id: a 64-bit unsigned integer as a decimal string; got ${JSON.stringify(String(id))}`);
}

/**
 * Makes unique, increasing ids for one machine id (0..255). Never goes back in time: if the
 * clock does, or 4096 ids are made in one millisecond, it borrows the next millisecond.
 */
export class GemstoneGenerator {
    readonly machineId: number;
    #lastTimestamp = -1;
    #sequence = 0;

    constructor(machineId: number = Math.floor(Math.random() * 256)) {
        if (!Number.isInteger(machineId) || machineId < 0 || machineId > 255) {
            throw new PhiRangeError(`machineId must be an integer from 0 to 255; got ${String(machineId)}`);
        }
        this.machineId = machineId;
    }

    /** A new id; returns its parts too (the message's priority and timestamp come from them). */
    next(priority: Priority = Priority.NORMAL): { id: string } & GemstoneIdParts {
        assertPriority(priority);
        let timestamp = Date.now();
        if (timestamp <= this.#lastTimestamp) {
            timestamp = this.#lastTimestamp;
            this.#sequence = (this.#sequence + 1) & 0xfff;
            if (this.#sequence === 0) timestamp += 1;
        } else {
            this.#sequence = 0;
        }
        this.#lastTimestamp = timestamp;
        const parts: GemstoneIdParts = { priority, timestamp, machineId: this.machineId, sequence: this.#sequence };
        return { id: encodeGemstoneId(parts), ...parts };
    }
}
