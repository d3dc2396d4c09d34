/**
 * The error taxonomy (src/errors.ts): argument errors are TypeError / RangeError with code ERR_INVALID_ARGUMENT,
 * state errors ERR_INVALID_STATE, timeouts ERR_TIMEOUT, and every one of them is `instanceof PhiAgentError`.
 * Model-free: nothing here loads a model (the checks run before anything native).
 */
import { expect } from "chai";
import * as lib from "../src/index.js";
import type { AgentRuntime, AgentSpec } from "../src/guild/index.js";

const { PhiModel, PhiAgentError, GuildTimeoutError, GuildBuilder, AgentBuilder, Agent, LLMPhiAgent, PhiAgentProps, GemstoneGenerator } = lib;

async function caught(fn: () => unknown): Promise<unknown> {
    try {
        await fn();
    } catch (err) {
        return err;
    }
    throw new Error("expected a throw");
}

function expectArgumentError(err: unknown, type: typeof TypeError | typeof RangeError, message: RegExp): void {
    expect(err, String(err)).to.be.instanceOf(type);
    expect(err).to.be.instanceOf(PhiAgentError);
    expect((err as { code?: unknown }).code, String(err)).to.equal("ERR_INVALID_ARGUMENT");
    expect((err as Error).message).to.match(message);
}

class Idle extends Agent {
    callPublish(): void {
        this.publish("t", { x: 1 }, { format: "a.b.C" });
    }
}

function fakeRuntime(): AgentRuntime {
    return { guildId: "g", generator: new GemstoneGenerator(), publish() {}, emit() {} };
}

describe("errors", function () {
    describe("argument errors carry ERR_INVALID_ARGUMENT, stay TypeError / RangeError, and are PhiAgentErrors", () => {
        it("PhiModel.load() options (checked before any file is read)", async () => {
            expectArgumentError(await caught(() => PhiModel.load({ modelPath: "none.gguf", contextSize: 0 })), RangeError, /"contextSize"/);
            expectArgumentError(await caught(() => PhiModel.load({ modelPath: 5 as never })), TypeError, /"modelPath"/);
            expectArgumentError(await caught(() => PhiModel.load({ modelPath: "none.gguf", device: "tpu" as never })), RangeError, /device "tpu"/);
            expectArgumentError(await caught(() => PhiModel.load({ modelPath: "none.gguf", mmap: "yes" as never })), TypeError, /"mmap"/);
            expectArgumentError(await caught(() => PhiModel.load(null as never)), TypeError, /options object/);
        });

        it("quantizeModel() arguments", async () => {
            expectArgumentError(await caught(() => lib.quantizeModel("", "out.gguf", { type: "q8_0" })), TypeError, /"inputPath"/);
            expectArgumentError(await caught(() => lib.quantizeModel("in.gguf", "out.gguf", { type: "q9" as never })), RangeError, /"type"/);
        });

        it("the guild's builders, clients and payload checks", async () => {
            expectArgumentError(await caught(() => new AgentBuilder(class NotAnAgent {} as never)), TypeError, /does not extend Agent/);
            expectArgumentError(await caught(() => new AgentBuilder(Idle).setId("has space")), RangeError, /id must be letters/);
            const guild = await new GuildBuilder("errors_guild").launch();
            try {
                expectArgumentError(await caught(() => guild.client("")), TypeError, /id must be a non-empty string/);
                const client = guild.client("c");
                expectArgumentError(await caught(() => client.publish("t", { f: () => 1 }, { format: "a.b.C" })), TypeError, /payload\.f is a function/);
                expectArgumentError(await caught(() => client.request("t", { x: 1 }, { format: "a.b.C", timeoutMs: -1 })), RangeError, /timeoutMs/);
                expectArgumentError(await caught(() => guild.onEvent(5 as never)), TypeError, /listener must be a function/);
            } finally {
                await guild.shutdown();
            }
        });

        it("PhiAgentProps", async () => {
            expectArgumentError(await caught(() => new PhiAgentProps({ modelPath: "m.gguf", contextSize: 8 })), RangeError, /contextSize must be >= 16/);
            expectArgumentError(await caught(() => new PhiAgentProps({ modelPath: "m.gguf", includePrompt: "yes" as never })), TypeError, /includePrompt/);
        });
    });

    describe("GuildTimeoutError", () => {
        it("is a PhiAgentError with code ERR_TIMEOUT", async () => {
            const guild = await new GuildBuilder("timeout_guild").launch();
            try {
                const probe = await guild.probe();
                // nobody publishes anything on this guild, so the wait can only end by its timeout
                const err = await caught(() => probe.waitFor(1, 5));
                expect(err).to.be.instanceOf(GuildTimeoutError);
                expect(err).to.be.instanceOf(PhiAgentError);
                expect((err as InstanceType<typeof PhiAgentError>).code).to.equal("ERR_TIMEOUT");
                expect((err as Error).name).to.equal("GuildTimeoutError");
            } finally {
                await guild.shutdown();
            }
        });
    });

    describe("state errors carry ERR_INVALID_STATE, not ERR_INVALID_ARGUMENT", () => {
        const spec = (): AgentSpec<Record<string, never>> => new AgentBuilder(Idle).setId("idle").setName("Idle").buildSpec() as AgentSpec<Record<string, never>>;

        it("an agent started twice, or used outside a guild", async () => {
            const agent = new Idle(spec());
            const notRunning = await caught(() => agent.callPublish());
            expect(notRunning).to.be.instanceOf(PhiAgentError);
            expect((notRunning as { code: string }).code).to.equal("ERR_INVALID_STATE");
            await agent.start(fakeRuntime());
            const twice = await caught(() => agent.start(fakeRuntime()));
            expect(twice).to.be.instanceOf(PhiAgentError);
            expect((twice as { code: string }).code).to.equal("ERR_INVALID_STATE");
            expect((twice as Error).message).to.match(/already started/);
            await agent.stop();
        });

        it("LLMPhiAgent.ready() before its guild started it", async () => {
            const agentSpec = new AgentBuilder(LLMPhiAgent).setId("phi").setName("Phi").setProperties({ modelPath: "m.gguf" }).buildSpec();
            const err = await caught(() => new LLMPhiAgent(agentSpec).ready());
            expect(err).to.be.instanceOf(PhiAgentError);
            expect((err as { code: string }).code).to.equal("ERR_INVALID_STATE");
            expect((err as Error).message).to.match(/has not been started/);
        });
    });

    describe("instanceof", () => {
        it("PhiAgentError covers the argument errors; the subclasses stay exact", () => {
            const range = new lib.PhiRangeError("x");
            expect(range).to.be.instanceOf(RangeError).and.instanceOf(PhiAgentError);
            expect(range).to.not.be.instanceOf(lib.DisposedError);
            expect(new lib.PhiTypeError("x")).to.be.instanceOf(TypeError).and.instanceOf(PhiAgentError);
            expect(new lib.DisposedError()).to.be.instanceOf(PhiAgentError).and.not.instanceOf(lib.AbortError);
            expect(new RangeError("x")).to.not.be.instanceOf(PhiAgentError);
            expect(lib.isArgumentError(range)).to.equal(true);
            expect(lib.isArgumentError(new lib.DisposedError())).to.equal(false);
        });
    });
});
