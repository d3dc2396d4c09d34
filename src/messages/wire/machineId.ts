/**
 * A GemstoneID machine id of this process's own, leased in Redis, so that processes on many hosts never make
 * the same id (an id is unique only per machine id and ms). Python hands out 1, 2, 3 ... per process that
 * launches agents (and 0 for dead letters), so the leases come from a range above those (default 128–255):
 *
 *   SET machine:{guild}:{n} {owner} NX PX {ttl}      for n from a random start through the range
 *
 * The lease is renewed every ttl/3 while the process runs and released (only if still ours) on release(). If it
 * was lost (Redis was away longer than the ttl and another process took the number), the next renewal leases
 * another number and the generator moves to it; `onChange` says so.
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { MessagingUnavailableError, PhiRangeError, PhiTypeError } from "../../errors.js";
import { GemstoneIdGenerator } from "./gemstone.js";
import type { Priority } from "../ids.js";

export interface MachineIdLeaseOptions {
    /** The guild (namespace) whose ids these are. */
    namespace: string;
    /** The numbers to lease from, inclusive. Default [128, 255]. */
    range?: readonly [number, number];
    /** How long a lease lives without renewal (ms). Default 30000. */
    ttlMs?: number;
    /** Who holds it (written as the key's value). Default `host:pid:random`. */
    owner?: string;
    /** Called when the machine id changes after a lost lease, or with an error when a renewal failed. */
    onChange?: (event: { type: "moved"; from: number; to: number } | { type: "renew_failed"; error: Error }) => void;
}

const RENEW = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`;

/** The Redis key of machine id `n` in `namespace`. */
export function machineIdKey(namespace: string, n: number): string {
    return `machine:${namespace}:${n}`;
}

/** An id generator whose machine id is leased; use `next()` like GemstoneIdGenerator's. */
export class MachineIdLease {
    readonly namespace: string;
    readonly owner: string;
    readonly ttlMs: number;
    readonly #range: readonly [number, number];
    readonly #redis: Redis;
    readonly #onChange: MachineIdLeaseOptions["onChange"];
    #generator: GemstoneIdGenerator;
    #timer?: NodeJS.Timeout;
    #released = false;

    private constructor(redis: Redis, machineId: number, options: Required<Pick<MachineIdLeaseOptions, "namespace" | "owner" | "ttlMs">> & MachineIdLeaseOptions) {
        this.#redis = redis;
        this.namespace = options.namespace;
        this.owner = options.owner;
        this.ttlMs = options.ttlMs;
        this.#range = options.range ?? [128, 255];
        this.#onChange = options.onChange;
        this.#generator = new GemstoneIdGenerator(machineId);
        this.#timer = setInterval(() => { void this.#renew(); }, Math.max(1, Math.floor(this.ttlMs / 3)));
        this.#timer.unref();
    }

    /** Leases a free machine id in `options.namespace`. Rejects (ERR_MESSAGING_UNAVAILABLE) when none is free. */
    static async acquire(redis: Redis, options: MachineIdLeaseOptions): Promise<MachineIdLease> {
        if (typeof options?.namespace !== "string" || options.namespace.length === 0) {
            throw new PhiTypeError(`MachineIdLease.acquire: namespace must be a non-empty string; got ${JSON.stringify(options?.namespace)}`);
        }
        const range = options.range ?? [128, 255];
        if (!Array.isArray(range) || range.length !== 2 || !range.every((n) => Number.isInteger(n) && n >= 0 && n <= 255) || range[0] > range[1]) {
            throw new PhiRangeError(`MachineIdLease.acquire: range must be [low, high] with 0 <= low <= high <= 255; got ${JSON.stringify(range)}`);
        }
        const ttlMs = options.ttlMs ?? 30_000;
        if (!Number.isInteger(ttlMs) || ttlMs < 100) throw new PhiRangeError(`MachineIdLease.acquire: ttlMs must be an integer >= 100; got ${String(ttlMs)}`);
        const owner = options.owner ?? `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
        const n = await leaseOne(redis, options.namespace, range, owner, ttlMs);
        return new MachineIdLease(redis, n, { ...options, owner, ttlMs, range });
    }

    /** The machine id held now. */
    get machineId(): number {
        return this.#generator.machineId;
    }

    /** A new GemstoneID with this process's machine id. */
    next(priority?: Priority): bigint {
        return this.#generator.next(priority);
    }

    /** The generator for the machine id held now (replaced when the lease moves). */
    get generator(): GemstoneIdGenerator {
        return this.#generator;
    }

    /** Renews now (also done on a timer). Resolves to the machine id held afterwards. */
    async renew(): Promise<number> {
        await this.#renew();
        return this.machineId;
    }

    async #renew(): Promise<void> {
        if (this.#released) return;
        const n = this.machineId;
        try {
            const kept = await this.#redis.eval(RENEW, 1, machineIdKey(this.namespace, n), this.owner, String(this.ttlMs));
            if (Number(kept) === 1) return;
            // expired while Redis was away: take it back if free, else move to another number
            const again = await this.#redis.set(machineIdKey(this.namespace, n), this.owner, "PX", this.ttlMs, "NX");
            if (again === "OK" || this.#released) return;
            const to = await leaseOne(this.#redis, this.namespace, this.#range, this.owner, this.ttlMs);
            this.#generator = new GemstoneIdGenerator(to);
            this.#onChange?.({ type: "moved", from: n, to });
        } catch (err) {
            this.#onChange?.({ type: "renew_failed", error: err instanceof Error ? err : new Error(String(err)) });
        }
    }

    /** Stops renewing and deletes the key if it is still ours. Idempotent; never rejects. */
    async release(): Promise<void> {
        if (this.#released) return;
        this.#released = true;
        clearInterval(this.#timer);
        try {
            await this.#redis.eval(RELEASE, 1, machineIdKey(this.namespace, this.machineId), this.owner);
        } catch {
            // Redis is away: the lease runs out by itself
        }
    }
}

async function leaseOne(redis: Redis, namespace: string, range: readonly [number, number], owner: string, ttlMs: number): Promise<number> {
    const [low, high] = range;
    const size = high - low + 1;
    const start = Math.floor(Math.random() * size);
    for (let i = 0; i < size; i++) {
        const n = low + ((start + i) % size);
        const ok = await redis.set(machineIdKey(namespace, n), owner, "PX", ttlMs, "NX");
        if (ok === "OK") return n;
    }
    throw new MessagingUnavailableError(
        `Every GemstoneID machine id from ${low} to ${high} of guild "${namespace}" is leased by another process; ` +
        `stop some, or lease from a wider range`, { details: { namespace, range: [low, high] } });
}
