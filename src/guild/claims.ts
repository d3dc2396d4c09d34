/**
 * Replicas: several processes (on any hosts) serve one agent id, and each request gets exactly one answer.
 * RusticAI has no consumer groups — every replica receives every request — so before working on a request a
 * replica claims it in Redis, atomically:
 *
 *   SET claim:{guild}:{agent}:{request id} {replica id} NX PX {lease}
 *
 * Only the replica that gets OK works on it; it renews the lease while it generates (every lease/3), checks
 * the claim is still its own right before it publishes, and then marks it done:
 *
 *   claim:... = "done:{replica id}:{reply ids}"   PX {done TTL}
 *
 * A replica that lost the race watches the claim: when it disappears without being done (its owner was
 * killed, so its lease ran out; or it stopped and handed the request back, which it announces on the channel
 * `claim:{guild}:{agent}` so the watchers look at once), the watcher claims it and answers.
 * A restarted replica's backlog replay finds the done marks and answers nothing twice. Requests older than
 * the done TTL are not answered from a replay (their marks are gone). Python ignores the claim keys.
 */
import os from "node:os";
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { PhiRangeError, PhiTypeError } from "../errors.js";
import { performance } from "node:perf_hooks";
import { decodeGemstoneId } from "../messages/ids.js";

/**
 * What `claim()` found: `claimed` (it is ours now), `taken` (another replica works on it), `done` (answered
 * already), `expired` (older than the done TTL: too old to be answered from a replay).
 */
export type ClaimResult = "claimed" | "taken" | "done" | "expired";

/** How replicas of one agent share its requests. */
export interface RequestClaims {
    /** This replica's id (in its claims, and in its heartbeats' checkmeta). */
    readonly replicaId: string;
    /** Tries to take the request; a claimed request's lease is renewed until complete() or release(). */
    claim(requestId: string): Promise<ClaimResult>;
    /** Whether the claim is still this replica's (renews it): call right before publishing the answer. */
    confirm(requestId: string): Promise<boolean>;
    /** Marks the request answered (with the ids of the answers) and stops renewing it. */
    complete(requestId: string, replyIds: readonly string[]): Promise<void>;
    /** Gives the request back (this replica stops without answering it): another replica may claim it at once. */
    release(requestId: string): Promise<void>;
    /**
     * Calls `onFree` once when the request — claimed by another replica — is free again without having been
     * answered (its owner died or handed it back); `onDone` (if given) once when it was answered instead.
     */
    watch(requestId: string, onFree: () => void, onDone?: () => void): void;
    /** Stops every watch (a stopping replica takes no more requests). */
    unwatchAll(): void;
    /** Called when a held claim was lost (the lease ran out before a renewal, e.g. after a stall). */
    onLost?: (requestId: string) => void;
    /** Stops renewing and watching; held claims are left to expire. Idempotent. */
    close(): Promise<void>;
}

export interface RedisRequestClaimsOptions {
    guildId: string;
    agentId: string;
    /** Default: `{hostname}:{pid}:{random}`. */
    replicaId?: string;
    /** How long a claim lives without renewal, ms (default 10 000): how soon a killed replica's request is taken over. */
    leaseMs?: number;
    /** How long the done mark lives, ms (default 24 h): a replay does not answer again within it. */
    doneTtlMs?: number;
}

export const CLAIM_DEFAULTS = { leaseMs: 10_000, doneTtlMs: 86_400_000 } as const;

/** Extends our own claim; takes a vanished one back (nobody holds it); 0 when it is done or another's. */
const RENEW = `
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0`;

/** Marks done (whoever holds it: an answer is out, so nobody else may publish one). */
const COMPLETE = `
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 5) == 'done:' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`;

/** Deletes our claim and tells the watchers (PUBLISH on the agent's claim channel). */
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
return 0`;

const PEEK = `return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}`;

/**
 * The answer and its done mark in one step: if the claim is still ours (or vanished), each copy as RusticAI's
 * Redis store writes it (SET msg EX, ZADD, PUBLISH, in that order), then the done mark; else nothing.
 * KEYS: claim, then per copy msg key and topic key. ARGV: replica, done value, done ttl, then per copy json, ttl, score.
 */
const ANSWER = `
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
local n = (#KEYS - 1) / 2
for i = 0, n - 1 do
  local json = ARGV[4 + i * 3]
  redis.call('SET', KEYS[2 + i * 2], json, 'EX', ARGV[5 + i * 3])
  redis.call('ZADD', KEYS[3 + i * 2], ARGV[6 + i * 3], json)
  redis.call('PUBLISH', KEYS[3 + i * 2], json)
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1`;

/** One stored and published copy of a message (one per topic), as RusticAI's Redis message store writes it. */
export interface StoredCopy {
    /** `msg:{guild}:{id}` */
    msgKey: string;
    json: string;
    ttlSeconds: number;
    /** `{guild}:{topic}`: the ZSET and the channel. */
    topicKey: string;
    /** The id's ms. */
    score: number;
}

function positiveInt(what: string, value: unknown, fallback: number): number {
    if (value === undefined) return fallback;
    if (typeof value !== "number" || !Number.isInteger(value)) throw new PhiTypeError(`${what} must be an integer (ms); got ${String(value)}`);
    if (value < 100) throw new PhiRangeError(`${what} must be at least 100 ms; got ${value}`);
    return value;
}

/** A replica id unique across hosts: hostname, pid and a random suffix. */
export function defaultReplicaId(): string {
    return `${os.hostname()}:${process.pid}:${randomBytes(3).toString("hex")}`;
}

/** RequestClaims in Redis (the guild's own server), through an ioredis client this object does not own. */
export class RedisRequestClaims implements RequestClaims {
    readonly replicaId: string;
    readonly leaseMs: number;
    readonly doneTtlMs: number;
    onLost?: (requestId: string) => void;
    readonly #redis: Redis;
    readonly #prefix: string;
    readonly #channel: string;
    #sub?: Redis;
    /** Held claims → when Redis last confirmed them (performance.now()). */
    readonly #held = new Map<string, number>();
    readonly #watches = new Map<string, { onFree: () => void; onDone?: () => void; timer?: NodeJS.Timeout }>();
    #renewTimer?: NodeJS.Timeout;
    #closed = false;

    constructor(redis: Redis, options: RedisRequestClaimsOptions) {
        if (!redis || typeof (redis as { eval?: unknown }).eval !== "function") {
            throw new PhiTypeError("RedisRequestClaims: expected an ioredis client (new Redis(url))");
        }
        for (const k of ["guildId", "agentId"] as const) {
            if (typeof options?.[k] !== "string" || options[k].length === 0) throw new PhiTypeError(`RedisRequestClaims: ${k} must be a non-empty string`);
        }
        this.#redis = redis;
        this.#channel = `claim:${options.guildId}:${options.agentId}`;
        this.#prefix = `${this.#channel}:`;
        this.replicaId = options.replicaId ?? defaultReplicaId();
        this.leaseMs = positiveInt("RedisRequestClaims: leaseMs", options.leaseMs, CLAIM_DEFAULTS.leaseMs);
        this.doneTtlMs = positiveInt("RedisRequestClaims: doneTtlMs", options.doneTtlMs, CLAIM_DEFAULTS.doneTtlMs);
    }

    /** The Redis key of a request's claim. */
    key(requestId: string): string {
        return this.#prefix + requestId;
    }

    async claim(requestId: string): Promise<ClaimResult> {
        if (decodeGemstoneId(requestId).timestamp < Date.now() - this.doneTtlMs) return "expired";
        const ok = await this.#redis.set(this.key(requestId), this.replicaId, "PX", this.leaseMs, "NX");
        if (ok === "OK") {
            this.#hold(requestId);
            return "claimed";
        }
        const value = await this.#redis.get(this.key(requestId));
        if (value === null) return this.claim(requestId); // freed between the two commands
        if (value === this.replicaId) {
            this.#hold(requestId);
            return "claimed";
        }
        return value.startsWith("done:") ? "done" : "taken";
    }

    async confirm(requestId: string): Promise<boolean> {
        // confirmed by Redis within the last third of a lease: it is still ours (a claim can only be lost by
        // running out, or by Redis forgetting it), so no round trip
        const at = this.#held.get(requestId);
        if (at !== undefined && performance.now() - at < this.leaseMs / 3) return true;
        return this.#renew(requestId);
    }

    async #renew(requestId: string): Promise<boolean> {
        const r = await this.#redis.eval(RENEW, 1, this.key(requestId), this.replicaId, this.leaseMs);
        const ok = Number(r) > 0;
        if (ok && this.#held.has(requestId)) this.#held.set(requestId, performance.now());
        return ok;
    }

    async complete(requestId: string, replyIds: readonly string[]): Promise<void> {
        this.#held.delete(requestId);
        await this.#redis.eval(COMPLETE, 1, this.key(requestId), `done:${this.replicaId}:${replyIds.join(",")}`, this.doneTtlMs);
    }

    /**
     * Publishes the answer and marks the request done in one atomic step (a Lua script: a replica killed at any
     * moment leaves both or neither, so a takeover never answers twice). Resolves false, writing nothing, when
     * the claim is no longer this replica's (answered or taken over meanwhile).
     */
    async publishAnswer(requestId: string, copies: readonly StoredCopy[], replyIds: readonly string[]): Promise<boolean> {
        const keys = [this.key(requestId)];
        const args: (string | number)[] = [this.replicaId, `done:${this.replicaId}:${replyIds.join(",")}`, this.doneTtlMs];
        for (const c of copies) {
            keys.push(c.msgKey, c.topicKey);
            args.push(c.json, c.ttlSeconds, c.score);
        }
        const r = await this.#redis.eval(ANSWER, keys.length, ...keys, ...args);
        this.#held.delete(requestId);
        return Number(r) === 1;
    }

    async release(requestId: string): Promise<void> {
        this.#held.delete(requestId);
        await this.#redis.eval(RELEASE, 2, this.key(requestId), this.#channel, this.replicaId, requestId);
    }

    watch(requestId: string, onFree: () => void, onDone?: () => void): void {
        if (this.#closed || this.#watches.has(requestId)) return;
        this.#watches.set(requestId, { onFree, ...(onDone ? { onDone } : {}) });
        this.#listen();
        void this.#check(requestId);
    }

    unwatchAll(): void {
        for (const w of this.#watches.values()) clearTimeout(w.timer);
        this.#watches.clear();
    }

    /** Requests this replica holds now. */
    get held(): string[] {
        return [...this.#held.keys()];
    }

    /** Requests this replica watches now. */
    get watching(): string[] {
        return [...this.#watches.keys()];
    }

    async close(): Promise<void> {
        this.#closed = true;
        clearInterval(this.#renewTimer);
        this.#renewTimer = undefined;
        this.unwatchAll();
        this.#held.clear();
        const sub = this.#sub;
        this.#sub = undefined;
        sub?.disconnect();
    }

    /** Subscribes (once, on a connection of its own) to the releases other replicas announce. */
    #listen(): void {
        if (this.#sub || this.#closed) return;
        const sub = this.#redis.duplicate();
        this.#sub = sub;
        sub.on("error", () => undefined); // reconnects by itself; the timed checks cover the gap
        sub.on("message", (_channel: string, requestId: string) => {
            const w = this.#watches.get(requestId);
            if (!w) return;
            clearTimeout(w.timer);
            void this.#check(requestId);
        });
        // once subscribed, look again at everything watched (a release may have come before the subscription)
        const recheck = () => {
            for (const [id, w] of this.#watches) {
                clearTimeout(w.timer);
                void this.#check(id);
            }
        };
        sub.subscribe(this.#channel).then(() => {
            recheck();
            sub.on("ready", recheck); // reconnected (ioredis subscribes again by itself)
        }, () => undefined);
    }

    #hold(requestId: string): void {
        this.#held.set(requestId, performance.now());
        if (!this.#renewTimer && !this.#closed) {
            this.#renewTimer = setInterval(() => void this.#renewAll(), Math.max(50, Math.floor(this.leaseMs / 3)));
            this.#renewTimer.unref();
        }
    }

    async #renewAll(): Promise<void> {
        if (this.#held.size === 0) {
            clearInterval(this.#renewTimer);
            this.#renewTimer = undefined;
            return;
        }
        await Promise.all([...this.#held.keys()].map(async (id) => {
            try {
                if (!(await this.#renew(id)) && this.#held.delete(id)) this.onLost?.(id);
            } catch {
                // Redis is away: the next round tries again (the lease may run out meanwhile; confirm() tells)
            }
        }));
    }

    async #check(requestId: string): Promise<void> {
        const w = this.#watches.get(requestId);
        if (!w || this.#closed) return;
        let value: string | null = null;
        let pttl = this.leaseMs;
        try {
            const r = await this.#redis.eval(PEEK, 1, this.key(requestId)) as [string | null, number];
            value = r[0] ?? null;
            pttl = Number(r[1]);
        } catch {
            value = "unknown"; // Redis is away: look again later
        }
        if (this.#watches.get(requestId) !== w) return;
        if (value === null) {
            this.#watches.delete(requestId);
            w.onFree();
            return;
        }
        if (value.startsWith("done:")) {
            this.#watches.delete(requestId);
            w.onDone?.();
            return;
        }
        const wait = Math.min(this.leaseMs, Math.max(20, pttl > 0 ? pttl + 10 : this.leaseMs / 4));
        w.timer = setTimeout(() => void this.#check(requestId), wait);
        w.timer.unref();
    }
}
