// Model-free: message formats, envelope, ids.
import { expect } from "chai";
import {
    ErrorMessage,
    GenerationPromptRequest,
    GenerationPromptResponse,
    GemstoneGenerator,
    Priority,
    compareMessageIds,
    createMessage,
    decodeGemstoneId,
    formatOf,
    messageToJSON,
    parseMessage,
    ValidationTypeError,
    ValidationRangeError,
} from "../src/messages/index.js";

describe("message formats", () => {
    describe("format names", () => {
        it("are RusticAI's qualified class names", () => {
            expect(GenerationPromptRequest.format).to.equal("rustic_ai.core.agents.commons.message_formats.GenerationPromptRequest");
            expect(GenerationPromptResponse.format).to.equal("rustic_ai.core.agents.commons.message_formats.GenerationPromptResponse");
            expect(ErrorMessage.format).to.equal("rustic_ai.core.agents.commons.message_formats.ErrorMessage");
            expect(GenerationPromptRequest.name).to.equal("GenerationPromptRequest");
        });
    });

    describe("GenerationPromptRequest.create", () => {
        it("returns the payload, tagged with its format and with nothing extra in its JSON", () => {
            const req = GenerationPromptRequest.create({ generation_prompt: "The benefits of multi-agent systems include" });
            expect(req).to.deep.equal({ generation_prompt: "The benefits of multi-agent systems include" });
            expect(formatOf(req)).to.equal(GenerationPromptRequest.format);
            expect(JSON.parse(JSON.stringify(req))).to.deep.equal({ generation_prompt: "The benefits of multi-agent systems include" });
        });

        it("accepts the optional extras", () => {
            const req = GenerationPromptRequest.create({ generation_prompt: "x", max_tokens: 5, temperature: 0.7, seed: 3, stop: ["\n"], top_k: 40, top_p: 0.9 });
            expect(req.max_tokens).to.equal(5);
        });

        it("throws a TypeError naming a missing or mistyped field", () => {
            expect(() => GenerationPromptRequest.create({} as never))
                .to.throw(ValidationTypeError, /generation_prompt is required \(a string\)/);
            expect(() => GenerationPromptRequest.create({ generation_prompt: 42 } as never))
                .to.throw(TypeError, /generation_prompt must be a string \(got number 42\)/);
            try {
                GenerationPromptRequest.create({ generation_prompt: "x", temperature: "hot" } as never);
                expect.fail("should have thrown");
            } catch (err) {
                expect(err).to.be.instanceOf(TypeError);
                expect((err as ValidationTypeError).code).to.equal("ERR_INVALID_ARGUMENT");
                expect((err as ValidationTypeError).errors.map((e) => e.path)).to.deep.equal(["temperature"]);
            }
        });

        it("throws a RangeError naming an out-of-range option", () => {
            expect(() => GenerationPromptRequest.create({ generation_prompt: "x", max_tokens: 0 }))
                .to.throw(ValidationRangeError, /max_tokens must be >= 1 \(got number 0\)/);
            expect(() => GenerationPromptRequest.create({ generation_prompt: "x", stop: ["ok", ""] }))
                .to.throw(RangeError, /stop\[1\] must not be empty/);
            expect(() => GenerationPromptRequest.create({ generation_prompt: "x", max_tokens: 2.5 }))
                .to.throw(RangeError, /max_tokens must be an integer/);
        });

        it("rejects a non-object", () => {
            expect(() => GenerationPromptRequest.create("hello" as never)).to.throw(TypeError, /must be an object/);
        });
    });

    describe("check / errors / parse", () => {
        it("accept a payload as a Python guild would send it (unknown fields are ignored, like pydantic)", () => {
            const fromPython = { generation_prompt: "hi", some_future_field: true };
            expect(GenerationPromptRequest.check(fromPython)).to.equal(true);
            expect(GenerationPromptRequest.parse(fromPython).generation_prompt).to.equal("hi");
        });

        it("list every bad field once", () => {
            const errors = GenerationPromptResponse.errors({ generated_response: 1 });
            expect(errors.map((e) => e.path)).to.deep.equal(["generation_prompt", "generated_response"]);
            expect(errors[0]!.kind).to.equal("type");
        });

        it("check a response's finish_reason and usage", () => {
            expect(GenerationPromptResponse.check({ generation_prompt: "a", generated_response: "ab", finish_reason: "length",
                usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } })).to.equal(true);
            const errors = GenerationPromptResponse.errors({ generation_prompt: "a", generated_response: "ab", finish_reason: "tired" });
            expect(errors[0]!.path).to.equal("finish_reason");
            expect(errors[0]!.message).to.match(/"eos"/);
        });
    });

    describe("jsonSchema", () => {
        it("is plain JSON Schema with the format as $id and the required field", () => {
            const schema = GenerationPromptRequest.jsonSchema as { $id: string; type: string; required: string[]; properties: Record<string, unknown> };
            expect(schema.$id).to.equal(GenerationPromptRequest.format);
            expect(schema.type).to.equal("object");
            expect(schema.required).to.deep.equal(["generation_prompt"]);
            expect(Object.keys(schema.properties)).to.include.members(["generation_prompt", "max_tokens", "stop"]);
            expect(JSON.parse(JSON.stringify(schema))).to.deep.equal(schema);
            expect((ErrorMessage.jsonSchema as { required: string[] }).required).to.deep.equal(["agent_type", "error_type", "error_message"]);
        });
    });
});

describe("Message envelope", () => {
    describe("createMessage", () => {
        it("fills id, timestamp, priority and a new thread from the id", () => {
            const before = Date.now();
            const m = createMessage({ sender: { id: "c", name: "C" }, topics: "default_topic", format: GenerationPromptRequest.format,
                payload: GenerationPromptRequest.create({ generation_prompt: "x" }) });
            expect(m.id).to.match(/^\d+$/);
            expect(m.thread).to.deep.equal([m.id]);
            expect(m.in_response_to).to.equal(null);
            expect(m.priority).to.equal(Priority.NORMAL);
            expect(m.timestamp).to.be.within(before, Date.now() + 1);
            const parts = decodeGemstoneId(m.id);
            expect(parts.timestamp).to.equal(m.timestamp);
            expect(parts.priority).to.equal(Priority.NORMAL);
        });
    });

    describe("GemstoneGenerator", () => {
        it("makes unique ids that increase, even many in one millisecond", () => {
            const gen = new GemstoneGenerator(7);
            const ids = Array.from({ length: 10000 }, () => gen.next().id);
            expect(new Set(ids).size).to.equal(ids.length);
            for (let i = 1; i < ids.length; i++) expect(compareMessageIds(ids[i - 1]!, ids[i]!)).to.equal(-1);
            expect(decodeGemstoneId(ids[0]!).machineId).to.equal(7);
        });

        it("rejects a bad machine id or priority", () => {
            expect(() => new GemstoneGenerator(256)).to.throw(RangeError, /machineId/);
            expect(() => new GemstoneGenerator().next(9 as Priority)).to.throw(RangeError, /priority/);
        });
    });

    describe("messageToJSON / parseMessage", () => {
        it("write ids as bare 64-bit integers (as Python does) and read them back without losing digits", () => {
            const gen = new GemstoneGenerator(255);
            const m = createMessage({ sender: { id: "a", name: "A" }, topics: ["t1", "t2"], format: "x.y.Z",
                payload: { id: 12, note: "payload ids stay as they are" }, in_response_to: gen.next().id, generator: gen, priority: Priority.LOWEST });
            const text = messageToJSON(m);
            expect(text).to.include(`"id":${m.id}`);
            expect(text).to.include(`"in_response_to":${m.in_response_to}`);
            expect(text).to.include(`"thread":[${m.id}]`);
            expect(text).to.include(`"payload":{"id":12,`);
            expect(BigInt(m.id) > BigInt(Number.MAX_SAFE_INTEGER)).to.equal(true);
            expect(parseMessage(text)).to.deep.equal(m);
        });

        it("read a message written by RusticAI (computed fields dropped, timestamp/priority from the id)", () => {
            const id = "4611917767716962304"; // priority 2, 2023-era timestamp
            const python = `{"sender":{"id":"py","name":"Python"},"topics":"default_topic","recipient_list":[],` +
                `"payload":{"generation_prompt":"Hello"},"format":"${GenerationPromptRequest.format}","in_response_to":null,` +
                `"thread":[${id}],"conversation_id":null,"forward_header":null,"routing_slip":null,"message_history":[],` +
                `"ttl":null,"is_error_message":false,"id":${id},"priority":2,"timestamp":1700000000000,` +
                `"current_thread_id":${id},"root_thread_id":${id}}`;
            const m = parseMessage(python);
            expect(m.id).to.equal(id);
            expect(m.thread).to.deep.equal([id]);
            expect(m).to.not.have.property("current_thread_id");
            expect(GenerationPromptRequest.check(m.payload)).to.equal(true);
        });

        it("name the bad field of an invalid envelope", () => {
            expect(() => parseMessage({ id: "1", sender: {}, topics: [], format: "abc", payload: {}, thread: [] }))
                .to.throw(/topics/);
            expect(() => parseMessage({ id: "x1", sender: {}, topics: "t", format: "abc", payload: {}, thread: [] }))
                .to.throw(/id must be a message id \(a 64-bit unsigned integer as a decimal string\) \(got string "x1"\)/);
            expect(() => parseMessage({ id: 2 ** 60, sender: {}, topics: "t", format: "abc", payload: {} }))
                .to.throw(RangeError, /lost digits/);
            expect(() => parseMessage("{not json")).to.throw(SyntaxError, /could not be parsed/);
        });
    });
});
