/**
 * checkGbnf (src/grammar/gbnf.ts): llama.cpp's GBNF syntax read the way llama.cpp's parser reads it, and every way a
 * grammar can be refused, each a GrammarError (RangeError, ERR_INVALID_ARGUMENT) naming the line and the fix.
 * Model-free; test/grammar.fuzz.test.ts checks the verdicts against llama.cpp itself.
 */
import { expect } from "chai";
import fs from "node:fs";
import path from "node:path";
import { GrammarError, PhiAgentError, type GrammarErrorKind } from "../src/errors.js";
import { checkGbnf, gbnfLiteral, type GbnfVocab } from "../src/grammar/gbnf.js";
import { GRAMMAR_LIMITS } from "../src/model/limits.js";
import { packageRoot } from "../src/native/binding.js";

function refused(text: string, vocab?: GbnfVocab): GrammarError {
    try {
        checkGbnf(text, vocab ? { vocab } : {});
    } catch (err) {
        expect(err, String(err)).to.be.instanceOf(GrammarError);
        expect(err).to.be.instanceOf(RangeError).and.instanceOf(PhiAgentError);
        expect((err as GrammarError).code).to.equal("ERR_INVALID_ARGUMENT");
        return err as GrammarError;
    }
    throw new Error(`expected ${JSON.stringify(text)} to be refused`);
}

function expectRefused(text: string, kind: GrammarErrorKind, message: RegExp): GrammarError {
    const err = refused(text);
    expect(err.kind, err.message).to.equal(kind);
    expect(err.message).to.match(message);
    return err;
}

describe("checkGbnf", function () {
    it("accepts every grammar shipped with llama.cpp (grammars/*.gbnf)", function () {
        const dir = path.join(packageRoot, "deps", "llama.cpp", "grammars");
        const files = fs.readdirSync(dir).filter((f) => f.endsWith(".gbnf"));
        expect(files.length).to.be.at.least(5);
        for (const f of files) {
            const g = checkGbnf(fs.readFileSync(path.join(dir, f), "utf8"));
            expect(g.rules.length, f).to.be.greaterThan(0);
            expect(g.names[g.root]).to.equal("root");
        }
    });

    it("numbers rules as llama.cpp does: names in order of appearance, then base_N for groups and repetitions", function () {
        const g = checkGbnf(`root ::= item ("," item)*\nitem ::= [a-z]+\n`);
        expect(g.names.slice(0, 5)).to.deep.equal(["root", "item", "root_2", "root_3", "item_4"]);
        // root ::= item root_3 ; root_2 ::= "," item ; root_3 ::= root_2 root_3 | ; item ::= [a-z] item_4
        const REF = 2, END = 0, ALT = 1, CHAR = 3;
        expect(g.rules[0]).to.deep.equal([REF, 1, REF, 3, END, 0]);
        expect(g.rules[3]).to.deep.equal([REF, 2, REF, 3, ALT, 0, END, 0]);
        expect(g.rules[2]).to.deep.equal([CHAR, 44, REF, 1, END, 0]);
    });

    it("reads what llama.cpp reads: comments, escapes, CRLF, '|' after a line break, tokens, any character", function () {
        checkGbnf("# a comment\r\nroot ::= \"a\" | # after an alternative\r\n  \"b\" [\\x41-\\u005A\\U0001F600] . <[12]> !<[13]>\r\n");
        checkGbnf('root ::= ("a"\n | "b")\n');
        checkGbnf('root ::= "\\t\\r\\n\\\\\\"\\[\\]\\-"');
        checkGbnf("root ::= [a-]"); // a '-' before ']' is a character
        checkGbnf("root ::= []"); // llama.cpp: an empty class adds nothing (matches the empty string)
        checkGbnf('root ::= "x"{0,0} "y"{3} "z"{1,} "w"{,2}'.replace("{,2}", "{0,2}"));
    });

    describe("refuses what llama.cpp refuses (same kinds as its parser)", function () {
        it("syntax errors, with the line and column", function () {
            expect(expectRefused('root ::= "a"\nx ::= "\\q"', "syntax", /unknown escape/).line).to.equal(2);
            expectRefused('root ::= "abc', "syntax", /end of the grammar inside a string/);
            expectRefused("root ::= [abc", "syntax", /inside a character class/);
            expectRefused('root := "a"', "syntax", /expecting ::= after the rule name "root"/);
            expectRefused('root ::= ("a"', "syntax", /expecting '\)'/);
            expectRefused('root ::= "\\x4"', "syntax", /2 hex digits/);
            expectRefused("root ::= *", "syntax", /expecting something before/);
            expectRefused('root ::= "a"{x}', "syntax", /expecting an integer/);
            expectRefused('root ::= "a"{2,x}', "syntax", /expecting '\}'/);
            expectRefused('root ::= "a"{99999999999999999999}', "syntax", /too large/);
            expectRefused('root ::= "a" )', "syntax", /expecting the end of the line/);
            expectRefused('root ::= "a"\n| "b"', "syntax", /expecting a rule name/);
            expectRefused("root ::= <[12", "syntax", /expecting '\]'/);
            expectRefused("root ::= !x", "syntax", /expecting '<'/);
        });
        it("undefined rules, no rules, no root", function () {
            expectRefused('root ::= item "x"', "undefined-rule", /"item" is used by "root" but never defined/);
            expectRefused("", "empty", /no rules/);
            expectRefused("# nothing but a comment\n\n", "empty", /no rules/);
            expectRefused('start ::= "a"', "no-root", /no "root" rule/);
        });
        it("left recursion llama.cpp detects", function () {
            expectRefused('root ::= root "a" | "b"', "left-recursion", /root → root/);
            expectRefused('root ::= x\nx ::= y "a" | "b"\ny ::= x', "left-recursion", /x → y → x/);
            expectRefused('root ::= e root "a" | "b"\ne ::= "" | "c"', "left-recursion", /root → root/);
        });
        it("repetitions past llama.cpp's limit of 2000", function () {
            expectRefused('root ::= "a"{2001}', "repetition", /at least 2001/);
            expectRefused('root ::= ("a" "b"{0,50}){50}', "repetition", /more than 2000 copies/);
        });
    });

    describe("refuses what llama.cpp accepts but would hang, abort or never finish on", function () {
        it("left recursion hidden behind rules that may be empty (llama.cpp loops forever)", function () {
            expectRefused('root ::= a root "x" | "y"\na ::= b\nb ::= ""', "hidden-left-recursion", /root → root/);
        });
        it("x{m,n} with n < m (llama.cpp creates rules until memory runs out) and n > 2000 (silently unbounded)", function () {
            expectRefused('root ::= "a"{3,1}', "limit", /write \{1,3\}/);
            expectRefused('root ::= "a"{0,2500}', "limit", /silently treat as unbounded/);
        });
        it("a repetition of something that may be empty (ambiguous: llama.cpp's parse stacks multiply)", function () {
            expectRefused('root ::= (("a"){0,4}){1,5}', "limit", /may match the empty string/);
            expectRefused('root ::= (x y){2}\nx ::= "a"?\ny ::= "b" | ""', "limit", /may match the empty string/);
            checkGbnf('root ::= ("a"?){0,1} ("b" "c"?){0,5}'); // an optional optional is harmless, a non-empty item is fine
        });
        it("a rule that can never finish", function () {
            expectRefused('root ::= "x" root', "unfinishable", /"root" can never finish/);
            expectRefused('root ::= "a" | loop\nloop ::= "b" loop', "unfinishable", /"loop" can never finish/);
            checkGbnf('root ::= "a"\nloop ::= "b" loop'); // unreachable from root: harmless
        });
        it("characters no token can produce", function () {
            expectRefused('root ::= "\\x00"', "character", /U\+0000/);
            expectRefused('root ::= "\\uD800"', "character", /not a Unicode scalar value/);
            expectRefused('root ::= "\\U00110000"', "character", /not a Unicode scalar value/);
            expectRefused("root ::= [z-a]", "character", /matches no character/);
            expectRefused("root ::= [^\\x01-\\U0010FFFF]", "character", /matches no character/);
            expectRefused('root ::= "a\u0000b"', "character", /NUL character/);
            checkGbnf("root ::= [^\\x01-\\uD7FF]"); // the private use and astral planes remain
        });
        it("grammars past GRAMMAR_LIMITS (nesting, size, branching)", function () {
            expectRefused(`root ::= ${"(".repeat(GRAMMAR_LIMITS.nesting + 1)}"a"${")".repeat(GRAMMAR_LIMITS.nesting + 1)}`, "limit", /nested parentheses/);
            expectRefused(`root ::= "${"x".repeat(600)}"{2000} "${"y".repeat(600)}"{2000}`, "limit", /elements/);
            // each level doubles the ways a rule begins (llama.cpp keeps a parse stack for each)
            const levels = Array.from({ length: 14 }, (_, i) => `r${i} ::= r${i + 1} "a" | r${i + 1} "b"`).join("\n");
            expectRefused(`root ::= r0\n${levels}\nr14 ::= "z"`, "limit", /may begin in more than/);
            // and each level doubles the paths llama.cpp's left-recursion check walks
            const paths = Array.from({ length: 24 }, (_, i) => `p${i} ::= p${i + 1} | p${i + 1}`).join("\n");
            expectRefused(`root ::= p0\n${paths}\np24 ::= "z"`, "limit", /paths/);
            const long = "a".repeat(GRAMMAR_LIMITS.chars + 1);
            expectRefused(long, "limit", /characters/);
        });
        it("token references outside the vocabulary, to end-of-text, or not one token (with a vocabulary)", function () {
            const vocab: GbnfVocab = {
                size: 100, eog: [99], tokenize: (t) => (t === "<one>" ? [5] : t === "<eos>" ? [99] : [1, 2]), hasText: (id) => id !== 50,
            };
            checkGbnf("root ::= <[5]> <one>", { vocab });
            expect(refused("root ::= <[100]>", vocab).message).to.match(/not in this model's vocabulary \(ids 0 to 99\)/);
            expect(refused("root ::= <[99]>", vocab).message).to.match(/ends generation/);
            expect(refused("root ::= <eos>", vocab).message).to.match(/ends generation/);
            expect(refused("root ::= <two>", vocab).message).to.match(/is 2 tokens, not one/);
            expect(refused("root ::= !<[50]> <[50]>", vocab).message).to.match(/no text/);
        });
    });

    it("a non-string is a TypeError with ERR_INVALID_ARGUMENT", function () {
        expect(() => checkGbnf(42)).to.throw(TypeError, /GBNF text/);
    });

    it("gbnfLiteral() writes any text as a literal that reads back as that text", function () {
        for (const text of ['plain', 'q"uote', "back\\slash", "tab\tnew\nline\r", "\u0001\u007f", "日本 ü"]) {
            const g = checkGbnf(`root ::= ${gbnfLiteral(text)}`);
            const chars = [];
            for (let i = 0; i < g.rules[0]!.length - 2; i += 2) chars.push(String.fromCodePoint(g.rules[0]![i + 1]!));
            expect(chars.join("")).to.equal(text);
        }
    });
});
