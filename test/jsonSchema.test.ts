/**
 * jsonSchemaToGbnf (src/grammar/jsonSchema.ts): what it supports, and every schema it cannot serve as a typed
 * JsonSchemaError (RangeError, ERR_INVALID_ARGUMENT) naming the keyword and where it is. Model-free: the grammars
 * are checked by checkGbnf; test/grammar.property.test.ts generates from them and validates with ajv.
 */
import { expect } from "chai";
import { Type } from "@sinclair/typebox";
import { JsonSchemaError, PhiAgentError } from "../src/errors.js";
import { checkGbnf } from "../src/grammar/gbnf.js";
import { jsonSchemaToGbnf } from "../src/grammar/jsonSchema.js";

function refused(schema: unknown, pointer: string, message: RegExp): JsonSchemaError {
    try {
        jsonSchemaToGbnf(schema);
    } catch (err) {
        expect(err, String(err)).to.be.instanceOf(JsonSchemaError);
        expect(err).to.be.instanceOf(RangeError).and.instanceOf(PhiAgentError);
        const e = err as JsonSchemaError;
        expect(e.code).to.equal("ERR_INVALID_ARGUMENT");
        expect(e.pointer, e.message).to.equal(pointer);
        expect(e.message).to.match(message);
        return e;
    }
    throw new Error(`expected ${JSON.stringify(schema)} to be refused`);
}

describe("jsonSchemaToGbnf", function () {
    it("writes a grammar llama.cpp accepts for each supported construct", function () {
        const schemas: unknown[] = [
            true, {}, { type: "string" }, { type: "string", minLength: 2, maxLength: 5 }, { type: "string", maxLength: 0 },
            { type: "integer" }, { type: "integer", minimum: -7, maximum: 1234 }, { type: "integer", exclusiveMinimum: 0 },
            { type: "number" }, { type: "number", minimum: 0, exclusiveMaximum: 1 }, { type: "boolean" }, { type: "null" },
            { type: ["string", "null"] }, { enum: ["a", 1, null, [1, 2], { k: "v" }] }, { const: "日本" },
            { type: "object", properties: { a: { type: "string" }, b: { type: "integer" } }, required: ["b"], additionalProperties: false },
            { type: "object", properties: { a: {}, b: {}, c: {} } }, { type: "object", required: ["x"] },
            { type: "object", additionalProperties: { type: "number" } }, { type: "object", additionalProperties: false },
            { type: "array", items: { type: "boolean" }, minItems: 1, maxItems: 3 }, { type: "array", maxItems: 0 },
            { type: "array", items: [{ type: "string" }, { type: "number" }], additionalItems: false },
            { type: "array", prefixItems: [{ type: "string" }], items: { type: "null" }, minItems: 3 },
            { anyOf: [{ type: "string" }, { type: "integer" }] }, { oneOf: [{ type: "string" }, { type: "integer" }] },
            { oneOf: [{ const: 1 }, { const: 2 }] }, { allOf: [{ type: "string" }] },
            { $defs: { p: { type: "integer" } }, type: "array", items: { $ref: "#/$defs/p" } },
            { definitions: { p: { type: "integer" } }, $ref: "#/definitions/p" },
            { type: "object", properties: { next: { $ref: "#" } } },
            { type: "string", title: "t", description: "d", default: "x", examples: ["y"], $comment: "c", $schema: "https://json-schema.org/draft/2020-12/schema" },
            // typebox writes these
            Type.Object({ name: Type.String({ maxLength: 10 }), age: Type.Optional(Type.Integer({ minimum: 0 })), tags: Type.Array(Type.String()) }),
            Type.Union([Type.Literal("a"), Type.Literal(3), Type.Null()]), Type.Record(Type.String(), Type.Number()),
            Type.Tuple([Type.String(), Type.Boolean()]), Type.Recursive((This) => Type.Object({ id: Type.String(), kids: Type.Array(This) })),
            Type.Intersect([Type.Object({ a: Type.String() }), Type.Object({ b: Type.Number() })]), Type.Enum({ A: "a", B: "b" }),
        ];
        for (const s of schemas) {
            const g = jsonSchemaToGbnf(s);
            expect(() => checkGbnf(g), JSON.stringify(s)).to.not.throw();
            expect(g.startsWith("root ::= ")).to.equal(true);
        }
    });

    it("orders properties required first and generates no undeclared ones; whitespace and numbers are bounded", function () {
        const g = jsonSchemaToGbnf({ type: "object", properties: { a: { type: "string" }, b: { type: "integer" } }, required: ["b"] });
        expect(g.indexOf('"\\"b\\""')).to.be.lessThan(g.indexOf('"\\"a\\""'));
        expect(g).to.match(/^ws ::= \| " " \| "\\n" \[ \\t\]\{0,20\}$/m);
        expect(g).to.match(/^int-part ::= "0" \| \[1-9\] \[0-9\]\{0,15\}$/m);
        expect(g).to.not.match(/value ::= object \| array/); // no rule for any JSON value: nothing undeclared
    });

    it("caps what llama.cpp cannot count: maxLength at 2000 characters, maxItems at 2001 items", function () {
        expect(jsonSchemaToGbnf({ type: "string", maxLength: 100000 })).to.contain("char{0,2000}");
        expect(jsonSchemaToGbnf({ type: "array", items: { type: "null" }, maxItems: 5000 })).to.contain("{0,2000}");
        refused({ type: "string", minLength: 2001 }, "/minLength", /more than the 2000 characters/);
        refused({ type: "array", minItems: 2003 }, "/minItems", /more than the 2001 items/);
    });

    it("refuses unsupported keywords, naming the keyword and its place", function () {
        for (const kw of ["pattern", "format", "multipleOf", "uniqueItems", "contains", "minProperties", "propertyNames", "not", "if", "unevaluatedProperties", "nullable", "x-custom"]) {
            const e = refused({ type: "object", properties: { a: { type: "string", [kw]: 1 } } }, `/properties/a/${kw}`, new RegExp(`the keyword "${kw}" is not supported`));
            expect(e.keyword).to.equal(kw);
            expect(e.message).to.match(/#\/properties\/a\//);
        }
    });

    it("refuses broken and unsatisfiable schemas", function () {
        refused(false, "", /is false, which no value matches/);
        refused({ type: "strnig" }, "/type", /unknown type "strnig"/);
        refused({ type: [] }, "/type", /empty list/);
        refused({ type: "string", minLength: 5, maxLength: 2 }, "", /below "minLength"/);
        refused({ type: "array", minItems: 3, maxItems: 1 }, "", /below "minItems"/);
        refused({ type: "integer", minimum: 5, maximum: 4 }, "", /no integer lies within its bounds/);
        refused({ type: "integer", minimum: 2 ** 60 }, "/minimum", /beyond ±2\^53/);
        refused({ type: "number", minimum: 0.5 }, "/minimum", /not an integer/);
        refused({ type: "number", exclusiveMinimum: true }, "/exclusiveMinimum", /draft 4/);
        refused({ enum: [] }, "", /no "enum" value/);
        refused({ type: "string", enum: [1, 2] }, "", /no "enum" value has the schema's "type"/);
        refused({ const: 1, enum: [2] }, "", /not among the "enum" values/);
        refused({ type: "string", const: "a", maxLength: 3 }, "/maxLength", /next to "const" is not supported/);
        refused({ type: "object", properties: { a: false }, required: ["a"] }, "/properties/a", /required property "a" has the schema false/);
        refused({ $ref: "#/$defs/missing" }, "/$ref", /points at nothing/);
        refused({ $ref: "https://example.com/s.json" }, "/$ref", /not a schema of this document/);
        refused({ $ref: "#", type: "object" }, "/type", /next to "\$ref" is not supported/);
        refused({ $ref: "#" }, "", /refers to itself \(\$ref\) before any text/);
        refused({ type: "object", properties: { a: { $ref: "#" } }, required: ["a"] }, "", /none is finite/);
        refused({ anyOf: [] }, "/anyOf", /non-empty array/);
        refused({ anyOf: [{ type: "string" }], type: "string" }, "/type", /next to "anyOf" is not supported/);
        refused({ oneOf: [{ type: "string" }, { type: "string", maxLength: 2 }] }, "/oneOf", /branches 0 and 1 may match the same value/);
        refused({ oneOf: [{ type: "integer" }, { type: "number" }] }, "/oneOf", /may match the same value/);
        refused({ allOf: [{ type: "string" }, { maxLength: 3 }] }, "/allOf/0", /"allOf" is supported with one branch/);
        refused({ type: "object", patternProperties: { "^a": { type: "string" } } }, "/patternProperties", /catch-all pattern/);
        refused({ type: "array", items: { type: "string" }, additionalItems: false }, "/additionalItems", /only next to an "items" array/);
        refused({ type: "array", items: [{ type: "string" }], additionalItems: false, minItems: 2 }, "/additionalItems", /needs more items/);
        refused({ enum: [1, Number.NaN] }, "/enum/1", /not plain JSON/);
        refused({ default: undefined, type: "string" }, "/default", /not plain JSON/);
    });

    it("a schema that is not an object or a boolean is a TypeError", function () {
        for (const bad of [null, 42, "string", [1]]) expect(() => jsonSchemaToGbnf(bad), String(bad)).to.throw(TypeError, /JSON Schema \(an object or a boolean\)/);
    });
});
