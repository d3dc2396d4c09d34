/**
 * Typed output through the public API: PhiModel.generate()/stream() with `jsonSchema` and `grammar`, the agent
 * (PhiAgentProps.jsonSchema, a request's json_schema) and the CLI (--json-schema, --grammar), on the tiny
 * random-weight model (where only the grammar makes the output valid). test/grammar.property.test.ts has the
 * many-schema property; test/gbnf.test.ts and test/jsonSchema.test.ts the checks without a model.
 */
import { expect } from "chai";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Type, type Static } from "@sinclair/typebox";
import { Ajv } from "ajv";
import { AbortError, GrammarError, JsonSchemaError, PhiModel, type TokenChunk } from "../src/index.js";
import { LLMPhiAgent, PhiAgentProps } from "../src/agent/index.js";
import { AgentBuilder, GuildBuilder, type Guild } from "../src/guild/index.js";
import { DEFAULT_TOPIC, ErrorMessage, GenerationPromptRequest, GenerationPromptResponse, type Message } from "../src/messages/index.js";
import { packageRoot } from "../src/native/binding.js";
import { tinyModel } from "./helpers/models.js";

const Person = Type.Object({
    name: Type.String({ minLength: 1, maxLength: 12 }),
    age: Type.Integer({ minimum: 0, maximum: 130 }),
    role: Type.Union([Type.Literal("admin"), Type.Literal("user")]),
    email: Type.Optional(Type.Union([Type.String({ maxLength: 20 }), Type.Null()])),
    tags: Type.Array(Type.String({ maxLength: 6 }), { maxItems: 3 }),
}, { additionalProperties: false });
type Person = Static<typeof Person>;

const ajv = new Ajv({ strict: false });
const validPerson = ajv.compile(Person);

describe("typed output (jsonSchema, grammar)", function () {
    this.timeout(300_000);
    let modelPath: string;
    let model: PhiModel;

    before(async function () {
        modelPath = await tinyModel("f32");
        model = await PhiModel.load({ modelPath, threads: 1, contextSize: 512, sequences: 4 });
    });
    after(async function () {
        await model?.dispose();
    });

    describe("PhiModel.generate() / stream()", function () {
        it("a typebox schema: the result is JSON that validates, parsed in result.json", async function () {
            for (const seed of [1, 2, 3]) {
                const r = await model.generate("Instruct: a user record\nOutput:", { jsonSchema: Person, maxTokens: 160, temperature: seed === 1 ? 0 : 1, seed });
                expect(r.finishReason, r.text).to.equal("eos");
                const value = JSON.parse(r.text) as Person;
                expect(validPerson(value), `${ajv.errorsText(validPerson.errors)}: ${r.text}`).to.equal(true);
                expect(r.json).to.deep.equal(value);
            }
        });

        it("stream(): the chunks add up to the text, which is the JSON of result.json", async function () {
            const s = model.stream("Output:", { jsonSchema: Person, maxTokens: 160, seed: 5, temperature: 1 });
            const chunks: TokenChunk[] = [];
            for await (const c of s) chunks.push(c);
            const r = await s.result;
            expect(chunks.map((c) => c.text).join("")).to.equal(r.text);
            expect(r.json).to.deep.equal(JSON.parse(r.text));
            expect(validPerson(r.json)).to.equal(true);
        });

        it("cut short by maxTokens: finishReason \"length\", no json, and the text is the start of the document a larger budget finishes", async function () {
            const full = await model.generate("Output:", { jsonSchema: Person, maxTokens: 200 });
            expect(full.finishReason).to.equal("eos");
            for (const n of [1, 3, Math.max(1, full.tokens.length - 1)]) {
                const cut = await model.generate("Output:", { jsonSchema: Person, maxTokens: n });
                expect(cut.finishReason).to.equal("length");
                expect(cut.json).to.equal(undefined);
                expect(full.text.startsWith(cut.text), `${JSON.stringify(cut.text)} starts ${JSON.stringify(full.text)}`).to.equal(true);
            }
        });

        it("a GBNF grammar: the text matches it", async function () {
            const grammar = 'root ::= "id-" [0-9]{3} ("," " "? [a-z]{1,5}){1,3}\n';
            for (const seed of [1, 2, 3, 4]) {
                const r = await model.generate("Output:", { grammar, maxTokens: 60, temperature: 1, seed });
                expect(r.finishReason).to.equal("eos");
                expect(r.text).to.match(/^id-[0-9]{3}(, ?[a-z]{1,5}){1,3}$/);
                expect(r.json).to.equal(undefined);
            }
        });

        it("token references: <[id]>, <text> and !<[id]> (a multi-character token fits though its first byte alone does not)", async function () {
            const [the] = model.tokenize(" the");
            const r = await model.generate("Output:", { grammar: `root ::= <[${the}]> "." | "x" <[${the}]>`, maxTokens: 5 });
            expect(r.finishReason).to.equal("eos");
            expect(r.text).to.be.oneOf([" the.", "x the"]);
            const n = await model.generate("Output:", { grammar: `root ::= !<[${the}]> "."`, maxTokens: 5, temperature: 1, seed: 3 });
            expect(n.finishReason).to.equal("eos");
            expect(n.tokens[0]).to.not.equal(the);
            expect(n.text.endsWith(".")).to.equal(true);
        });

        it("with a grammar, a stop string ends the text only where the grammar's document is complete", async function () {
            // [a-z ]{1,40}: complete after every character; a stop string taken from the middle of the output stops there
            const free = await model.generate("Output:", { grammar: "root ::= [a-z ]{8,40}\n", maxTokens: 80 });
            // the first token boundary where the grammar is complete (8 characters or more): a stop string starting
            // there is honoured, and no earlier occurrence is (incomplete there, or inside a token)
            let end = 0;
            const boundaries = free.tokens.map((t) => (end += model.detokenize([t]).length));
            const at = boundaries.find((b) => b >= 8 && b + 2 <= free.text.length)!;
            expect(at, free.text).to.be.a("number");
            const stopped = await model.generate("Output:", { grammar: "root ::= [a-z ]{8,40}\n", maxTokens: 80, stop: [free.text.slice(at, at + 2)] });
            expect(stopped.finishReason).to.equal("stop");
            expect(stopped.text).to.equal(free.text.slice(0, at));
            // "<" [a-z ]{8,40} ">": complete only after the ">", so a stop string inside is part of the document
            const closed = await model.generate("Output:", { grammar: 'root ::= "<" [a-z ]{8,40} ">"\n', maxTokens: 80 });
            expect(closed.finishReason).to.equal("eos");
            const inner = closed.text.slice(2, 4);
            const kept = await model.generate("Output:", { grammar: 'root ::= "<" [a-z ]{8,40} ">"\n', maxTokens: 80, stop: [inner] });
            expect(kept.finishReason).to.equal("eos");
            expect(kept.text).to.equal(closed.text);
        });

        it("constrained and unconstrained calls decode together; each constrained one validates", async function () {
            const calls = [
                model.generate("Output:", { jsonSchema: Person, maxTokens: 160, temperature: 1, seed: 11 }),
                model.generate("The benefits of agents include", { maxTokens: 24 }),
                model.generate("Output:", { jsonSchema: { type: "array", items: { type: "integer", minimum: -5, maximum: 5 }, maxItems: 4 }, maxTokens: 80, temperature: 1, seed: 12 }),
                model.generate("Output:", { grammar: 'root ::= ("yes" | "no") "."\n', maxTokens: 8, temperature: 1, seed: 13 }),
            ];
            const [a, b, c, d] = await Promise.all(calls);
            expect(validPerson(a!.json)).to.equal(true);
            expect(b!.tokens.length).to.equal(24);
            expect(c!.json).to.satisfy((v: unknown) => Array.isArray(v) && v.length <= 4 && v.every((x) => Number.isInteger(x) && x >= -5 && x <= 5));
            expect(d!.text).to.be.oneOf(["yes.", "no."]);
        });

        it("aborting a constrained call rejects with AbortError, and the model goes on", async function () {
            const controller = new AbortController();
            const p = model.generate("Output:", { grammar: "root ::= [a-z]{2000}\n", maxTokens: 400, signal: controller.signal, onToken: () => controller.abort() });
            const err = await p.then(() => undefined, (e: unknown) => e);
            expect(err).to.be.instanceOf(AbortError);
            const ok = await model.generate("Output:", { jsonSchema: { type: "boolean" } });
            expect(ok.json).to.be.a("boolean");
        });

        it("refuses, before anything runs: a bad schema, a bad grammar, both at once, a token outside the vocabulary", async function () {
            const before = model.stats();
            const reasons = await Promise.all([
                model.generate("x", { jsonSchema: { type: "string", pattern: "^a" } }),
                model.generate("x", { grammar: 'root ::= "a" | root' }),
                model.generate("x", { grammar: "root ::= <[51200]>" }),
                model.generate("x", { grammar: "root ::= <|endoftext|>" }),
                model.generate("x", { grammar: 'root ::= "a"', jsonSchema: {} }),
                model.generate("x", { grammar: "" }),
                model.generate("x", { jsonSchema: "string" as never }),
            ].map((p) => p.then(() => undefined, (e: unknown) => e)));
            expect(reasons[0]).to.be.instanceOf(JsonSchemaError).and.to.have.property("keyword", "pattern");
            expect(reasons[1]).to.be.instanceOf(GrammarError).and.to.have.property("kind", "left-recursion");
            expect(reasons[2]).to.be.instanceOf(GrammarError).and.to.have.property("kind", "token");
            expect((reasons[3] as Error).message).to.match(/ends generation/);
            expect((reasons[4] as Error).message).to.match(/not both/);
            expect(reasons[5]).to.be.instanceOf(RangeError);
            expect(reasons[6]).to.be.instanceOf(TypeError);
            for (const r of reasons) expect((r as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
            expect(model.stats()).to.deep.equal(before);
        });
    });

    describe("LLMPhiAgent", function () {
        let guild: Guild;
        const spec = (id: string, extra: Partial<ConstructorParameters<typeof PhiAgentProps>[0]> = {}) => new AgentBuilder(LLMPhiAgent)
            .setId(id).setName(id).setProperties(new PhiAgentProps({ modelPath, device: "cpu", threads: 1, contextSize: 512, maxNewTokens: 200, ...extra })).buildSpec();

        before(async function () {
            guild = await new GuildBuilder("typed_guild")
                .addAgentSpec(spec("typed", { jsonSchema: Person }))
                .launch();
            await guild.agent<LLMPhiAgent>("typed")!.ready();
        });
        after(async function () {
            await guild?.shutdown();
        });

        async function ask(payload: Record<string, unknown>): Promise<Message> {
            const client = guild.client(`c${Math.random().toString(36).slice(2, 8)}`);
            try {
                return await client.request(DEFAULT_TOPIC, payload, { format: GenerationPromptRequest.format, timeoutMs: 120_000 });
            } finally {
                await client.close();
            }
        }

        it("PhiAgentProps.jsonSchema: generated_response is the JSON alone, and it validates", async function () {
            const reply = await ask({ generation_prompt: "Instruct: a user\nOutput:" });
            const r = GenerationPromptResponse.parse(reply.payload);
            expect(validPerson(JSON.parse(r.generated_response))).to.equal(true);
            expect(r.finish_reason).to.equal("eos");
            expect(Object.keys(reply.payload as object).sort()).to.deep.equal(["finish_reason", "generated_response", "generation_prompt", "usage"]);
        });

        it("a request's json_schema replaces the agent's; a bad one is a ValidationError reply", async function () {
            const r = GenerationPromptResponse.parse((await ask({ generation_prompt: "Output:", json_schema: { type: "array", items: { type: "boolean" }, minItems: 1, maxItems: 2 } })).payload);
            const v = JSON.parse(r.generated_response) as unknown;
            expect(v).to.satisfy((x: unknown) => Array.isArray(x) && x.length >= 1 && x.length <= 2 && x.every((b) => typeof b === "boolean"));
            const bad = ErrorMessage.parse((await ask({ generation_prompt: "Output:", json_schema: { type: "string", format: "email" } })).payload);
            expect(bad.error_type).to.equal("ValidationError");
            expect(bad.error_message).to.match(/"format" is not supported/);
        });

        it("JSON cut short by the token budget is an IncompleteOutputError reply with the partial text", async function () {
            const e = ErrorMessage.parse((await ask({ generation_prompt: "Output:", max_tokens: 3 })).payload);
            expect(e.error_type).to.equal("IncompleteOutputError");
            expect(e.code).to.equal("ERR_OUTPUT_INCOMPLETE");
            expect((e.details as { finish_reason: string }).finish_reason).to.equal("length");
        });

        it("PhiAgentProps refuses a schema it cannot serve, and includePrompt: true with a schema", function () {
            expect(() => new PhiAgentProps({ modelPath: "m.gguf", jsonSchema: { type: "string", pattern: "x" } })).to.throw(RangeError, /jsonSchema is not usable: .*"pattern" is not supported/);
            expect(() => new PhiAgentProps({ modelPath: "m.gguf", jsonSchema: Person, includePrompt: true })).to.throw(RangeError, /includePrompt cannot be true together with jsonSchema/);
            const p = new PhiAgentProps({ modelPath: "m.gguf", jsonSchema: Person });
            expect(new PhiAgentProps(p.toJSON()).jsonSchema).to.deep.equal(JSON.parse(JSON.stringify(Person)));
        });
    });

    describe("CLI", function () {
        const CLI = path.join(packageRoot, "dist", "src", "cli", "main.js");
        let dir: string;
        before(function () {
            dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-typed-cli-"));
        });
        after(function () {
            fs.rmSync(dir, { recursive: true, force: true });
        });
        const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 120_000, env: { ...process.env, PHI2_MODEL: "" } });

        it("generate --json-schema FILE|JSON and --grammar FILE constrain the output", function () {
            const schemaFile = path.join(dir, "person.json");
            fs.writeFileSync(schemaFile, JSON.stringify(Person));
            for (const flag of [schemaFile, JSON.stringify(Person)]) {
                const r = cli(["generate", "--model", modelPath, "--prompt", "Output:", "--device", "cpu", "--threads", "1", "--max-tokens", "160", "--json-schema", flag, "--json"]);
                expect(r.status, r.stderr).to.equal(0);
                const out = JSON.parse(r.stdout) as { text: string; json: unknown; finishReason: string };
                expect(out.finishReason).to.equal("eos");
                expect(validPerson(out.json)).to.equal(true);
                expect(JSON.parse(out.text)).to.deep.equal(out.json);
            }
            const grammarFile = path.join(dir, "g.gbnf");
            fs.writeFileSync(grammarFile, 'root ::= "ok " [0-9]{2}\n');
            const g = cli(["generate", "--model", modelPath, "--prompt", "Output:", "--device", "cpu", "--threads", "1", "--grammar", grammarFile]);
            expect(g.status, g.stderr).to.equal(0);
            expect(g.stdout).to.match(/^ok [0-9]{2}\n$/);
        });

        it("a bad schema or grammar is a one-line usage error (exit 2) before the model loads", function () {
            const missing = path.join(dir, "missing.gguf"); // never loaded: the flags fail first
            const cases: [string[], RegExp][] = [
                [["--json-schema", '{"type":"string","format":"uri"}'], /"format" is not supported/],
                [["--json-schema", "{not json"], /--json-schema: the schema is not JSON/],
                [["--json-schema", path.join(dir, "none.json")], /cannot read/],
                [["--grammar", path.join(dir, "none.gbnf")], /--grammar: cannot read/],
                [["--json-schema", "{}", "--grammar", "x"], /not both/],
            ];
            const bad = path.join(dir, "bad.gbnf");
            fs.writeFileSync(bad, 'root ::= "a" undefined-rule\n');
            cases.push([["--grammar", bad], /"undefined-rule" is used by "root" but never defined/]);
            for (const [flags, message] of cases) {
                const r = cli(["generate", "--model", missing, "--prompt", "x", ...flags]);
                expect(r.status, `${flags.join(" ")}: ${r.stderr}`).to.equal(2);
                const lines = r.stderr.trim().split("\n");
                expect(lines, r.stderr).to.have.length(1);
                expect(lines[0]).to.match(message);
            }
        });
    });
});
