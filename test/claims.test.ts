// RedisRequestClaims (src/guild/claims.ts) against a real redis-server: one claim per request among replicas,
// renewal, hand-back, takeover after a lost owner, done marks that outlive the owner, lost-claim notice.
import { expect } from "chai";
import type { Redis } from "ioredis";
import { RedisRequestClaims } from "../src/guild/claims.js";
import { GemstoneGenerator, encodeGemstoneId, Priority } from "../src/messages/ids.js";
import { startRedisServer, type RedisServer } from "./helpers/redis.js";

describe("RedisRequestClaims (real redis-server)", function () {
    this.timeout(60000);
    let server: RedisServer;
    let redis: Redis;
    const gen = new GemstoneGenerator(7);
    const made: RedisRequestClaims[] = [];
    const claims = (replicaId: string, leaseMs = 10_000, doneTtlMs?: number) => {
        const c = new RedisRequestClaims(redis, { guildId: "g1", agentId: "phi_agent", replicaId, leaseMs, ...(doneTtlMs ? { doneTtlMs } : {}) });
        made.push(c);
        return c;
    };

    before(async () => {
        server = await startRedisServer({ persist: false });
        redis = await server.client();
    });
    afterEach(async () => {
        for (const c of made.splice(0)) await c.close();
    });
    after(async () => {
        await server?.stop();
    });

    it("gives each request to exactly one of many replicas racing for it", async () => {
        const replicas = ["a", "b", "c"].map((r) => claims(r));
        for (let i = 0; i < 20; i++) {
            const { id } = gen.next();
            const results = await Promise.all(replicas.map((r) => r.claim(id)));
            expect(results.filter((x) => x === "claimed"), results.join()).to.have.length(1);
            expect(results.filter((x) => x === "taken")).to.have.length(2);
            expect(await redis.get(`claim:g1:phi_agent:${id}`)).to.be.oneOf(["a", "b", "c"]);
        }
    });

    it("a completed request stays done for every replica, a restarted one included", async () => {
        const a = claims("a");
        const { id } = gen.next();
        expect(await a.claim(id)).to.equal("claimed");
        await a.complete(id, ["111", "222"]);
        expect(await redis.get(a.key(id))).to.equal("done:a:111,222");
        expect(await claims("b").claim(id)).to.equal("done");
        expect(await claims("a").claim(id)).to.equal("done"); // the same replica id after a restart
        expect(await a.confirm(id)).to.equal(false);
        expect(await redis.pttl(a.key(id))).to.be.greaterThan(10_000);
    });

    it("renews a held claim while it is worked on (PEXPIRE every lease/3)", async () => {
        const monitor = await server.monitor();
        const a = claims("a", 300);
        const { id } = gen.next();
        expect(await a.claim(id)).to.equal("claimed");
        let renewals = 0;
        await monitor.waitFor((c) => c.args[0] === "PEXPIRE" && c.args[1] === a.key(id) && ++renewals === 4);
        // four renewals of a 300 ms lease: alive well past it
        expect(await redis.get(a.key(id))).to.equal("a");
        await monitor.stop();
    });

    it("a watcher takes over when the owner stops renewing (killed), not before", async () => {
        const a = claims("a", 300);
        const b = claims("b", 300);
        const { id } = gen.next();
        expect(await a.claim(id)).to.equal("claimed");
        expect(await b.claim(id)).to.equal("taken");
        const freed = new Promise<void>((resolve) => b.watch(id, resolve));
        await a.close(); // what kill -9 leaves: a claim nobody renews
        await freed;
        expect(await redis.exists(a.key(id))).to.equal(0);
        expect(await b.claim(id)).to.equal("claimed");
    });

    it("a released request is free for the watchers at once; a done one never frees them", async () => {
        const a = claims("a");
        const b = claims("b");
        const { id } = gen.next();
        await a.claim(id);
        expect(await b.claim(id)).to.equal("taken");
        const freed = new Promise<void>((resolve) => b.watch(id, resolve));
        await a.release(id);
        await freed;
        expect(await b.claim(id)).to.equal("claimed");
        // done while watched: the watch ends with onDone, never onFree
        const c = claims("c", 200);
        const next = gen.next().id;
        await b.claim(next);
        let freedToo = false;
        const answered = new Promise<void>((resolve) => c.watch(next, () => { freedToo = true; }, resolve));
        await b.complete(next, ["1"]);
        await answered;
        expect(freedToo).to.equal(false);
        expect(c.watching).to.not.include(next);
    });

    it("tells when a held claim was lost (someone else holds it now), and confirm() says so", async () => {
        const a = claims("a", 300);
        const { id } = gen.next();
        await a.claim(id);
        const lost = new Promise<string>((resolve) => { a.onLost = resolve; });
        await redis.set(a.key(id), "intruder", "PX", 10_000);
        expect(await lost).to.equal(id);
        expect(await a.confirm(id)).to.equal(false);
        expect(a.held).to.not.include(id);
    });

    it("a claim that vanished (Redis forgot it) is taken back by its owner's renewal", async () => {
        const monitor = await server.monitor();
        const a = claims("a", 300);
        const { id } = gen.next();
        await a.claim(id);
        await redis.del(a.key(id));
        await monitor.waitFor((c) => c.args[0] === "EVAL" && c.args.includes(a.key(id)));
        expect(await redis.get(a.key(id))).to.equal("a");
        expect(await a.confirm(id)).to.equal(true);
        await monitor.stop();
    });

    it("does not answer from a replay what is older than the done marks", async () => {
        const a = claims("a", 10_000, 1000);
        const old = encodeGemstoneId({ priority: Priority.NORMAL, timestamp: Date.now() - 5000, machineId: 1, sequence: 0 });
        expect(await a.claim(old)).to.equal("expired");
        expect(await redis.exists(a.key(old))).to.equal(0);
    });

    it("rejects bad options with typed errors", () => {
        expect(() => new RedisRequestClaims(undefined as unknown as Redis, { guildId: "g", agentId: "a" })).to.throw(TypeError);
        expect(() => new RedisRequestClaims(redis, { guildId: "", agentId: "a" })).to.throw(TypeError, /guildId/);
        expect(() => new RedisRequestClaims(redis, { guildId: "g", agentId: "a", leaseMs: 5 })).to.throw(RangeError, /leaseMs/);
    });
});
