// RusticAI's wire format (src/messages/wire): Messages byte for byte as Python writes them, bigint ids, GemstoneIDs,
// dead letters. Model-free and Redis-free; the golden data is a recorded run of the real Python code.
import { expect } from "chai";
import {
    GemstoneIdGenerator, Priority, WireMessageError, markFloat, WIRE_MESSAGE_KEYS, buildDeadLetterMessage, createWireMessage,
    deadLetterTopic, formatPyFloat, gemstoneId, gemstoneParts, isMarkedFloat, normalizeGemstoneId, parsePyJson, parseWireMessage,
    readWireMessage, serializeWireMessage, stringifyPyJson, wireMessageTime, type WireMessage,
} from "../src/messages/wire/index.js";
import { parseLossless, type PyJson } from "../src/messages/wire/json.js";
import { prng } from "../scripts/malformed-corpus.js";
import { goldenMessages } from "./helpers/golden.js";

const REQUEST = '{"sender":{"id":"probe","name":"Probe"},"topics":"default_topic","recipient_list":[],' +
    '"payload":{"generation_prompt":"The benefits of multi-agent systems include"},' +
    '"format":"rustic_ai.core.agents.commons.message_formats.GenerationPromptRequest",' +
    '"in_response_to":null,"thread":[9741991419077201920],"conversation_id":null,"forward_header":null,' +
    '"routing_slip":null,"message_history":[],"ttl":null,"is_error_message":false,"traceparent":null,' +
    '"session_state":null,"topic_published_to":"default_topic","enrich_with_history":0,"process_status":null,' +
    '"origin_guild_stack":[],"id":9741991419077201920,"priority":4,"timestamp":1796179696204.0}';

function ok(text: string): WireMessage {
    const r = parseWireMessage(text);
    if (!r.ok) throw r.error;
    return r.message;
}

function rejected(text: string): WireMessageError {
    const r = parseWireMessage(text);
    expect(r.ok, `should be rejected: ${text}`).to.equal(false);
    if (r.ok) throw new Error("unreachable");
    expect(r.error).to.be.instanceOf(WireMessageError);
    expect(r.error.code).to.equal("ERR_INVALID_MESSAGE");
    return r.error;
}

/** REQUEST with `patch` applied to its top-level keys (values as JSON text; undefined removes the key). */
function variant(patch: Record<string, string | undefined>): string {
    const obj = parsePyJson(REQUEST) as Record<string, unknown>;
    for (const [k, v] of Object.entries(patch)) {
        if (v === undefined) delete obj[k];
        else {
            obj[k] = parsePyJson(v);
            if (/^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(v) && /[.eE]/.test(v)) markFloat(obj, k); // a float stays a float
        }
    }
    return stringifyPyJson(obj);
}

describe("RusticAI wire format", () => {
    describe("the golden run (every message Python wrote)", () => {
        const messages = goldenMessages();

        it("has the messages of the recorded run", () => {
            expect(messages.length).to.equal(60);
            expect(new Set(messages.map((m) => m.command))).to.deep.equal(new Set(["SET", "ZADD", "PUBLISH"]));
        });

        it("parses every one and writes it back byte for byte", () => {
            for (const g of messages) {
                const r = parseWireMessage(g.json);
                expect(r.ok, `${g.command} ${g.key}: ${r.ok ? "" : r.error.message}`).to.equal(true);
                if (!r.ok) continue;
                expect(serializeWireMessage(r.message)).to.equal(g.json);
            }
        });

        it("keeps every id exact: the key's id, the ZADD score (the id's ms), thread and in_response_to", () => {
            const byId = new Map<bigint, WireMessage>();
            let beyondDouble = 0;
            for (const g of messages) {
                const m = ok(g.json);
                expect(typeof m.id).to.equal("bigint");
                byId.set(m.id, m);
                // JSON.parse + JSON.stringify would have changed the ids
                if (JSON.stringify(JSON.parse(g.json)) !== g.json) beyondDouble++;
                if (g.command === "SET") {
                    expect(g.key).to.equal(`msg:probe-6199e82dae:${m.id}`);
                    expect(g.number).to.equal("3600");
                }
                if (g.command === "ZADD") expect(g.number).to.equal(String(wireMessageTime(m).timestamp));
                for (const t of m.thread) expect(typeof t).to.equal("bigint");
                if (m.in_response_to !== null) expect(typeof m.in_response_to).to.equal("bigint");
            }
            expect(beyondDouble).to.equal(messages.length);
            // the seed request and its answer
            const request = [...byId.values()].find((m) => m.payload.generation_prompt === "The benefits of multi-agent systems include" && m.sender.id === "probe")!;
            const reply = [...byId.values()].find((m) => m.in_response_to === request.id && m.format.endsWith("GenerationPromptResponse"))!;
            expect(request.id).to.equal(9741995592590036992n);
            expect(reply.id).to.equal(9741995592599240704n);
            expect(reply.thread).to.deep.equal([request.id]);
            expect(reply.message_history[0]!.origin).to.equal(request.id);
            expect(reply.message_history[0]!.result).to.equal(reply.id);
            expect(gemstoneParts(reply.id).machineId).to.equal(200);
            expect(reply.topics).to.equal("default_topic");
            // an error reply's topics were a list, and stay one
            const error = [...byId.values()].find((m) => m.is_error_message)!;
            expect(error.topics).to.deep.equal(["error_topic"]);
        });
    });

    describe("GemstoneID", () => {
        it("reads the worked example: priority, ms since 1970, machine, sequence", () => {
            expect(gemstoneParts(9741991419077201920n)).to.deep.equal({ priority: 4, timestamp: 1796179696204, machineId: 1, sequence: 0 });
            expect(gemstoneParts(9741991419090599936n)).to.deep.equal({ priority: 4, timestamp: 1796179696207, machineId: 200, sequence: 0 });
            expect(gemstoneParts(5130305409441890304n).priority).to.equal(Priority.HIGH);
            expect(gemstoneId({ priority: 4, timestamp: 1796179696204, machineId: 1, sequence: 0 })).to.equal(9741991419077201920n);
        });

        it("is laid out as priority<<61 | (ms-2023)<<22 | machine<<12 | sequence", () => {
            const id = gemstoneId({ priority: 7, timestamp: Date.UTC(2023, 0, 1) + 5, machineId: 0xab, sequence: 0xcde });
            expect(id).to.equal((7n << 61n) | (5n << 22n) | (0xabn << 12n) | 0xcden);
            expect(() => gemstoneId({ priority: 8 as Priority, timestamp: Date.now(), machineId: 0, sequence: 0 })).to.throw(RangeError);
            expect(() => gemstoneId({ priority: 4, timestamp: Date.now(), machineId: 256, sequence: 0 })).to.throw(RangeError);
            expect(() => gemstoneId({ priority: 4, timestamp: Date.now(), machineId: 0, sequence: 4096 })).to.throw(RangeError);
        });

        it("reads only the low 64 bits and rejects a machine field over 255, as Python's from_int", () => {
            const id = 9741991419077201920n;
            expect(normalizeGemstoneId(id + (1n << 64n))).to.equal(id);
            expect(normalizeGemstoneId(id - (1n << 64n))).to.equal(id);
            expect(() => normalizeGemstoneId(id | (1n << 20n))).to.throw(RangeError, /machine id field/);
            expect(() => normalizeGemstoneId(-1n)).to.throw(RangeError);
        });

        it("counts a sequence per millisecond, starts at 0, and never repeats past 4096 in one ms", () => {
            let now = Date.UTC(2026, 11, 2, 2, 48, 16, 204);
            const gen = new GemstoneIdGenerator(200, () => now);
            const a = gen.next();
            const b = gen.next();
            expect(gemstoneParts(a)).to.deep.equal({ priority: 4, timestamp: now, machineId: 200, sequence: 0 });
            expect(gemstoneParts(b).sequence).to.equal(1);
            const ids = new Set<bigint>([a, b]);
            for (let i = 0; i < 5000; i++) ids.add(gen.next());
            expect(ids.size).to.equal(5002);
            now += 10;
            const c = gen.next(Priority.HIGH);
            expect(gemstoneParts(c)).to.deep.equal({ priority: 2, timestamp: now, machineId: 200, sequence: 0 });
            // NORMAL ids are beyond int64 (and far beyond 2^53)
            expect(a >= 1n << 63n).to.equal(true);
            // a clock that goes back does not make an older id
            now -= 100;
            expect(gen.next(Priority.HIGH) > c).to.equal(true);
        });
    });

    describe("JSON as pydantic writes it", () => {
        it("formats floats like pydantic", () => {
            // values printed by pydantic 2.13 model_dump_json
            const table: [number, string][] = [
                [1e16, "1e+16"], [1e15, "1000000000000000.0"], [1e-7, "1e-7"], [1e-5, "0.00001"], [1e-6, "1e-6"],
                [1.5e-6, "1.5e-6"], [0.0001234, "0.0001234"], [1.5e300, "1.5e+300"], [0.1, "0.1"],
                [2.5799999999999996, "2.5799999999999996"], [123456789012345680, "1.2345678901234568e+17"], [-0, "-0.0"],
                [1, "1.0"], [5e-324, "5e-324"], [1e21, "1e+21"], [9990000000000000, "9990000000000000.0"], [1.5e16, "1.5e+16"],
                [0.000015, "0.000015"], [123.456, "123.456"], [-1e-7, "-1e-7"], [9007199254740992, "9007199254740992.0"],
                [1796179696204, "1796179696204.0"],
            ];
            for (const [v, text] of table) expect(formatPyFloat(v), String(v)).to.equal(text);
        });

        it("writes back floats as floats, big ints exactly, and keys in their order", () => {
            const text = '{"b":2,"1":1.0,"a":{"z":1e+16,"0":[1.0,2,-0.0]},"big":1180591620717411303424,"s":"a\\u0001\\n\\"é😀"}';
            const v = parsePyJson(text) as Record<string, unknown>;
            expect(v.big).to.equal(1180591620717411303424n);
            expect(v["1"]).to.equal(1);
            expect(stringifyPyJson(v)).to.equal(text);
        });
    });

    describe("the fast JSON parse", () => {
        /** The same value: same types (bigint vs number), same key order, same float marks. */
        function expectSame(a: PyJson, b: PyJson, where = "$"): void {
            expect(typeof a, where).to.equal(typeof b);
            if (a === null || typeof a !== "object") {
                expect(a, where).to.equal(b);
                return;
            }
            expect(Array.isArray(a), where).to.equal(Array.isArray(b));
            const ka = Object.keys(a);
            expect(ka, where).to.deep.equal(Object.keys(b as object));
            for (const k of ka) {
                expect(isMarkedFloat(a, k), `${where}.${k} float mark`).to.equal(isMarkedFloat(b as object, k));
                expectSame((a as Record<string, PyJson>)[k]!, (b as Record<string, PyJson>)[k]!, `${where}.${k}`);
            }
        }

        /** parsePyJson (fast where it can be) against lossless-json alone: the same value, or the same error. */
        function expectAgrees(text: string): "value" | "error" {
            let slow: PyJson | Error;
            try { slow = parseLossless(text); } catch (e) { slow = e as Error; }
            let fast: PyJson | Error;
            try { fast = parsePyJson(text); } catch (e) { fast = e as Error; }
            if (slow instanceof Error) {
                expect(fast, `accepted what lossless-json rejects: ${JSON.stringify(text)}`).to.be.instanceOf(Error);
                expect((fast as Error).message).to.equal(slow.message);
                return "error";
            }
            expect(fast, `rejected what lossless-json reads: ${JSON.stringify(text)}`).not.to.be.instanceOf(Error);
            expectSame(fast as PyJson, slow);
            expect(stringifyPyJson(fast as PyJson)).to.equal(stringifyPyJson(slow));
            return "value";
        }

        it("reads every message of the golden run as lossless-json does", () => {
            for (const g of goldenMessages()) expect(expectAgrees(g.json)).to.equal("value");
        });

        it("agrees with lossless-json on numbers, strings and keys at the edges", () => {
            const cases = [
                "0", "-0", "-0.0", "1", "1.0", "1e5", "1E+400", "-1e-7", "9007199254740991", "9007199254740992", "-9007199254740993",
                "123456789012345678901234567890", "[1,-0,2.50,1e2,0.0,-5]", '{"a":1,"a":2.0}', '{"a":2.0,"a":1}', '{"__proto__":1.0}',
                '"\\u0001x"', '["\\u00011.5"]', '{"1":1.0,"0":2}', "  [ 9007199254740993 ]  ", "[1.0e0]", '{"a":"\\\\"}',
                '{"a":"\\\\\\"1.5","b":1.5}', '{"k":"x 1.5 y","n":-12.25}', "true", "null", '"x"', '"1.5"', "", " ", "[", "{",
                '{"a":01}', '{"a":1.5.3}', "[1-2]", "[--1]", "[1e]", "[+1]", "[.5]", "[1.]", "[-]", "[00]", "[-01]", "[1,]",
                '{"a":1,}', '["a\nb"]', '["\u2028"]', '{"a":"\ud800"}', '[1 2]', '["1.5" 2.5]', "[NaN]", "[Infinity]",
                '{"a":1e400,"b":-1e400,"c":5e-324,"d":1e-400}', '["é😀",1.5]', "[0e0,0E+1,-0e-0]",
            ];
            const seen = { value: 0, error: 0 };
            for (const c of cases) seen[expectAgrees(c)]++;
            expect(seen.value).to.be.greaterThan(20);
            expect(seen.error).to.be.greaterThan(15);
        });

        it("agrees with lossless-json on 4000 seeded mutations of the golden messages", () => {
            const texts = goldenMessages().map((g) => g.json);
            const rand = prng(20261203);
            const alphabet = '0123456789.eE+-"\\,:{}[] u\u0001';
            const seen = { value: 0, error: 0 };
            for (let n = 0; n < 4000; n++) {
                let t = texts[Math.floor(rand() * texts.length)]!;
                for (let k = 1 + Math.floor(rand() * 3); k > 0; k--) {
                    const at = Math.floor(rand() * t.length);
                    const ch = alphabet[Math.floor(rand() * alphabet.length)]!;
                    const op = rand();
                    t = op < 0.4 ? t.slice(0, at) + ch + t.slice(at + 1) : op < 0.7 ? t.slice(0, at) + ch + t.slice(at) : t.slice(0, at) + t.slice(at + 1);
                }
                seen[expectAgrees(t)]++;
            }
            // both kinds are well represented: texts that still parse, and texts that do not
            expect(seen.value).to.be.greaterThan(400);
            expect(seen.error).to.be.greaterThan(400);
        });
    });

    describe("reading like Python's Message.from_json", () => {
        it("never throws: not JSON, not an object, no id", () => {
            for (const bad of ["", "{", "[1]", "null", "{\"sender\":{}}", "\u0000"]) {
                const r = parseWireMessage(bad);
                expect(r.ok).to.equal(false);
            }
            expect(rejected("{").kind).to.equal("json");
            expect(rejected("{\"sender\":{}}").errors[0]!.path).to.equal("id");
            expect(() => readWireMessage("{")).to.throw(WireMessageError);
        });

        it("rejects what pydantic rejects", () => {
            const cases: [Record<string, string | undefined>, string][] = [
                [{ type: "\"request\"" }, "type"],
                [{ recipient_list: "null" }, "recipient_list"],
                [{ thread: "null" }, "thread"],
                [{ message_history: "null" }, "message_history"],
                [{ origin_guild_stack: "null" }, "origin_guild_stack"],
                [{ is_error_message: "null" }, "is_error_message"],
                [{ payload: "{}" }, "payload"],
                [{ payload: "[1]" }, "payload"],
                [{ id: "\"9741991419077201920\"" }, "id"],
                [{ id: "1.0" }, "id"],
                [{ id: "9741991419078250496" }, "id"], // machine field 256: Python's from_int raises
                [{ format: "\"ab\"" }, "format"],
                [{ ttl: "1.5" }, "ttl"],
                [{ process_status: "\"done\"" }, "process_status"],
                [{ topics: "[]" }, "topics"],
                [{ topics: "\"  \"" }, "topics"],
                [{ sender: undefined }, "sender"],
                [{ routing_slip: '{"steps":[{"method_name":"x"}]}' }, "routing_slip.steps[0]"],
                [{ message_history: '[{"agent":{"id":"a"},"origin":1,"result":2}]' }, "message_history[0].processor"],
            ];
            for (const [patch, path] of cases) {
                const err = rejected(variant(patch));
                expect(err.errors.map((e) => e.path), JSON.stringify(patch)).to.include(path);
            }
        });

        it("accepts what pydantic accepts, normalized as pydantic does", () => {
            const m = ok(variant({
                current_thread_id: "1", root_thread_id: "1", priority: "0", timestamp: "0",
                in_response_to: "\" 12 \"", ttl: "2.0", is_error_message: "\"yes\"", topics: "\" default_topic \"",
                payload: '{" generation_prompt ":" hi  ","n":{" k ":[" x "]}}',
                sender: '{"id":"probe","name":"Probe","extra":1}',
            }));
            expect(m.in_response_to).to.equal(12n);
            expect(m.ttl).to.equal(2);
            expect(m.is_error_message).to.equal(true);
            expect(m.topics).to.equal("default_topic");
            expect(m.payload).to.deep.equal({ generation_prompt: "hi", n: { k: ["x"] } });
            expect(m.sender).to.deep.equal({ id: "probe", name: "Probe" });
            // priority comes from the id, not from the JSON
            expect(serializeWireMessage(m)).to.contain('"priority":4,"timestamp":1796179696204.0}');
        });

        it("fills in Python's defaults (an empty thread is [id])", () => {
            const m = ok('{"id":9741991419077201920,"sender":{},"topics":["a","b"],"payload":{"k":1}}');
            expect(m.thread).to.deep.equal([9741991419077201920n]);
            expect(serializeWireMessage(m)).to.equal('{"sender":{"id":null,"name":null},"topics":["a","b"],"recipient_list":[],' +
                '"payload":{"k":1},"format":"generic_json","in_response_to":null,"thread":[9741991419077201920],' +
                '"conversation_id":null,"forward_header":null,"routing_slip":null,"message_history":[],"ttl":null,' +
                '"is_error_message":false,"traceparent":null,"session_state":null,"topic_published_to":null,' +
                '"enrich_with_history":0,"process_status":null,"origin_guild_stack":[],"id":9741991419077201920,' +
                '"priority":4,"timestamp":1796179696204.0}');
        });

        it("writes a routing slip with every field of RoutingRule, as Python dumps it", () => {
            const m = ok(variant({ routing_slip: '{"steps":[{"agent":{"name":"Phi-2 LLM"},"destination":{"topics":"user_outbox:u1"},"route_times":-1,"transformer":{"handler":"$"}}]}' }));
            const text = serializeWireMessage(m);
            expect(text).to.contain('"routing_slip":{"steps":[{"agent":{"id":null,"name":"Phi-2 LLM"},"agent_type":null,' +
                '"method_name":null,"origin_filter":null,"message_format":null,"destination":{"topics":"user_outbox:u1",' +
                '"recipient_list":[],"priority":null},"mark_forwarded":false,"route_times":-1,"transformer":{"style":"simple",' +
                '"expression_type":"jsonata","handler":"$"},"agent_state_update":null,"guild_state_update":null,' +
                '"process_status":null,"reason":null}]}');
            expect(serializeWireMessage(ok(text))).to.equal(text);
        });
    });

    describe("writing", () => {
        const gen = new GemstoneIdGenerator(201);

        it("creates messages with Python's keys in Python's order, nothing else", () => {
            const m = createWireMessage({ generator: gen, sender: { id: "phi_agent", name: "Phi-2 LLM" }, topics: "default_topic", payload: { a: 1 } });
            const keys = Object.keys(JSON.parse(serializeWireMessage(m)) as object);
            expect(keys).to.deep.equal([...WIRE_MESSAGE_KEYS]);
            expect(m.thread).to.deep.equal([m.id]);
            expect(gemstoneParts(m.id).machineId).to.equal(201);
        });

        it("echoes topics as a string or a list, as given", () => {
            const s = createWireMessage({ generator: gen, sender: { id: "x" }, topics: "t", payload: { a: 1 } });
            const l = createWireMessage({ generator: gen, sender: { id: "x" }, topics: ["t"], payload: { a: 1 } });
            expect(serializeWireMessage(s)).to.contain('"topics":"t"');
            expect(serializeWireMessage(l)).to.contain('"topics":["t"]');
        });

        it("refuses to write what Python cannot read", () => {
            const m = createWireMessage({ generator: gen, sender: { id: "x" }, topics: "t", payload: { a: 1 } });
            const bad: [string, unknown][] = [["payload", {}], ["recipient_list", null], ["thread", null], ["format", "x"],
                ["topics", []], ["id", 1], ["id", 1n << 64n], ["process_status", "done"]];
            for (const [k, v] of bad) {
                expect(() => serializeWireMessage({ ...m, [k]: v } as WireMessage), k).to.throw(WireMessageError);
            }
            expect(() => serializeWireMessage({ ...m, extra: 1 } as unknown as WireMessage)).to.throw(WireMessageError, /extra/);
            expect(() => createWireMessage({ generator: gen, sender: { id: "x" }, topics: "t", payload: {} })).to.throw(WireMessageError);
        });

        it("keeps 64-bit ids exact in every id field", () => {
            const big = 18446744073709551615n - 4095n; // machine 255... with top bits set
            const m = createWireMessage({
                generator: gen, sender: { id: "x" }, topics: "t", payload: { a: 1 }, in_response_to: big, thread: [big, 9741991419077201921n],
                conversation_id: big, forward_header: { origin_message_id: big, on_behalf_of: { id: "y", name: null } },
                message_history: [{ agent: { id: "x", name: null }, origin: big, result: 9741991419077201921n, processor: "p", from_topic: null, to_topics: ["t"], reason: null }],
            });
            const text = serializeWireMessage(m);
            expect(text.match(/18446744073709547520/g)!.length).to.equal(5);
            expect(text).to.contain("9741991419077201921");
            const back = ok(text);
            expect(back.in_response_to).to.equal(big);
            expect(back.thread).to.deep.equal([big, 9741991419077201921n]);
        });
    });

    describe("dead letters", () => {
        it("are written as Python writes them", () => {
            const gen = new GemstoneIdGenerator(130);
            const original = ok(REQUEST);
            const dl = buildDeadLetterMessage({
                generator: gen, deliveryBackend: "RedisMessagingBackend", clientId: "demo-guild$phi_agent",
                originalTopic: "demo-guild:default_topic", original, errorType: "ValueError", errorMessage: "boom",
            });
            const text = serializeWireMessage(dl);
            expect(text.startsWith('{"sender":{"id":"messaging_backend","name":"MessagingBackend"},"topics":"dead_letter_queue","recipient_list":[],' +
                '"payload":{"delivery_backend":"RedisMessagingBackend","client_id":"demo-guild$phi_agent","original_topic":"demo-guild:default_topic",' +
                '"original_message_id":9741991419077201920,"original_message":{"sender":{"id":"probe","name":"Probe"},')).to.equal(true);
            expect(text).to.contain('"id":9741991419077201920,"priority":4,"timestamp":1796179696204.0,"current_thread_id":9741991419077201920,' +
                '"root_thread_id":9741991419077201920},"error_type":"ValueError","error_message":"boom"},"format":"generic_json",' +
                '"in_response_to":9741991419077201920,');
            expect(dl.is_error_message).to.equal(true);
            expect(dl.topic_published_to).to.equal(null);
            expect(deadLetterTopic("demo-guild:default_topic", "demo-guild")).to.equal("demo-guild:dead_letter_queue");
            expect(deadLetterTopic("plain", null)).to.equal("dead_letter_queue");
        });

        it("carry what was received when it was not a Message", () => {
            const gen = new GemstoneIdGenerator(130);
            const raw = '{"id":9741991419077201920,"type":"x"}';
            const r = parseWireMessage(raw);
            if (r.ok) throw new Error("should not parse");
            const dl = buildDeadLetterMessage({
                generator: gen, deliveryBackend: "RedisMessagingBackend", clientId: "g$a", originalTopic: "g:t",
                original: { text: raw, ...(r.value !== undefined ? { value: r.value } : {}) }, errorType: r.error.pythonErrorType, errorMessage: r.error.message,
            });
            const text = serializeWireMessage(dl);
            expect(text).to.contain('"original_message_id":9741991419077201920,"original_message":{"id":9741991419077201920,"type":"x"},"error_type":"ValidationError"');
            const notJson = buildDeadLetterMessage({
                generator: gen, deliveryBackend: "RedisMessagingBackend", clientId: "g$a", originalTopic: "g:t",
                original: { text: "{oops" }, errorType: "JSONDecodeError", errorMessage: "x",
            });
            expect(serializeWireMessage(notJson)).to.contain('"original_message_id":0,"original_message":{"raw":"{oops"}');
        });
    });
});
