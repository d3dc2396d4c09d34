/**
 * GBNF (llama.cpp's grammar format) checked in TypeScript, before llama.cpp ever sees it.
 *
 * llama.cpp's parser (src/llama-grammar.cpp, llama_grammar_parser) reports most mistakes by returning no grammar,
 * but some inputs it accepts make it hang, abort or exhaust memory, and some make a grammar that can never finish.
 * checkGbnf() reads the text the way llama.cpp's parser does — the same syntax, the same rule numbering, the same
 * expansion of repetitions and groups into rules — so it accepts exactly the texts llama.cpp parses, and then
 * refuses, with a GrammarError naming the line, the rule and the fix:
 *   what llama.cpp refuses too (GrammarError.kind): "syntax" (bad escapes, a missing `::=`, an unclosed string...),
 *     "undefined-rule", "no-root", "empty" (no rules), "left-recursion" (the cases llama.cpp detects),
 *     "repetition" (x{m,n} with m > 2000, or more than 2000 expanded copies);
 *   what it accepts but must not get:
 *     "hidden-left-recursion": a rule that can begin with itself through rules that may be empty, which
 *       llama.cpp's check misses and then loops on forever;
 *     "limit": x{m,n} with n < m (llama.cpp loops creating rules until memory runs out), n > 2000 (silently
 *       unbounded), nesting, size and path counts past GRAMMAR_LIMITS (src/model/limits.ts: stack overflow,
 *       exponential time);
 *       an item that may be empty repeated two or more times (x{0,4}){0,5} (ambiguous: llama.cpp's parse stacks
 *       multiply with every such nesting, and sampling crawls);
 *     "unfinishable": a rule reachable from root that can never end (its every alternative needs itself);
 *     "character": a NUL character, a literal character that is not a Unicode scalar value, a character class that
 *       matches no character (no token could ever produce it);
 *     "token": a token reference <[id]> outside the vocabulary, the end-of-text token, a named token <...> that is
 *       not exactly one token (checked when a vocabulary is given).
 */
import { GrammarError, PhiTypeError, type GrammarErrorKind } from "../errors.js";
import { GRAMMAR_LIMITS } from "../model/limits.js";

// llama_gretype (include/llama.h... src/llama-grammar.h), same numbering.
const END = 0, ALT = 1, RULE_REF = 2, CHAR = 3, CHAR_NOT = 4, CHAR_RNG_UPPER = 5, CHAR_ALT = 6, CHAR_ANY = 7, TOKEN = 8, TOKEN_NOT = 9;

/** Largest value std::stoull accepts. */
const UINT64_MAX = (1n << 64n) - 1n;
const UNBOUNDED = -1;

const enum C {
    NUL = 0, TAB = 9, LF = 10, CR = 13, SPACE = 32, BANG = 33, QUOTE = 34, HASH = 35, LPAREN = 40, RPAREN = 41, STAR = 42,
    PLUS = 43, COMMA = 44, DASH = 45, DOT = 46, COLON = 58, LT = 60, EQ = 61, GT = 62, QUESTION = 63, LBRACKET = 91,
    BACKSLASH = 92, RBRACKET = 93, CARET = 94, LBRACE = 123, PIPE = 124, RBRACE = 125,
}

/** A token reference in the grammar: <[id]> or <text>. */
export interface GbnfTokenRef {
    /** The id of <[id]>; undefined for <text>. */
    id?: bigint;
    /** The text of <text>, angle brackets included (llama.cpp tokenizes exactly this, special tokens parsed). */
    text?: string;
    line: number;
    column: number;
}

/** What checkGbnf() needs to know about the model to check token references. */
export interface GbnfVocab {
    size: number;
    /** Ids of end-of-generation tokens: the grammar cannot ask for them (llama.cpp only lets them end a document). */
    eog: readonly number[];
    /** Tokenizes `text` parsing special tokens (llama.cpp does this for <text>). */
    tokenize(text: string): ArrayLike<number>;
    /** Whether the token has text when detokenized (a control token has none, so it can never be generated). */
    hasText(id: number): boolean;
}

/** A grammar as llama.cpp's parser builds it (rules as flat [type, value, type, value, ...] arrays). */
export interface ParsedGbnf {
    rules: number[][];
    /** Rule names, by id (generated ones are named like llama.cpp names them: base_N). */
    names: string[];
    root: number;
    tokens: GbnfTokenRef[];
}

function isDigit(c: number): boolean {
    return c >= 48 && c <= 57;
}
function isWordChar(c: number): boolean {
    return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === C.DASH || isDigit(c);
}
function hexValue(c: number): number {
    if (c >= 48 && c <= 57) return c - 48;
    if (c >= 97 && c <= 102) return c - 87;
    if (c >= 65 && c <= 70) return c - 55;
    return -1;
}
/** A character a token can produce: a Unicode scalar value other than NUL. */
function isScalar(c: number): boolean {
    return c > 0 && c <= 0x10ffff && (c < 0xd800 || c > 0xdfff);
}
function showChar(c: number): string {
    if (c >= 0x21 && c <= 0x7e) return `'${String.fromCharCode(c)}'`;
    return `U+${c.toString(16).toUpperCase().padStart(4, "0")}`;
}

class Parser {
    readonly cp: number[];
    readonly symbols = new Map<string, number>();
    readonly rules: (number[] | undefined)[] = [];
    readonly tokens: GbnfTokenRef[] = [];
    /** Problems llama.cpp would not report; raised after its own checks pass (so kinds stay comparable with it). */
    readonly deferred: GrammarError[] = [];
    /** Repetitions of two or more, to refuse those of an item that may be empty once nullability is known. */
    readonly repetitions: { pos: number; ruleName: string; item: number[] }[] = [];
    elements = 0;
    depth = 0;

    constructor(readonly text: string) {
        this.cp = Array.from(text, (ch) => ch.codePointAt(0)!);
        this.cp.push(0);
    }

    /** The text of cp[from, to) (without spreading a long range into one call's arguments). */
    str(from: number, to: number): string {
        let out = "";
        for (let i = from; i < to; i += 4096) out += String.fromCodePoint(...this.cp.slice(i, Math.min(to, i + 4096)));
        return out;
    }

    where(pos: number): { line: number; column: number } {
        let line = 1, column = 1;
        for (let i = 0; i < pos && i < this.cp.length; i++) {
            if (this.cp[i] === C.LF) line++, (column = 1);
            else column++;
        }
        return { line, column };
    }

    /** The text at `pos`, for messages: "at 'foo ::= ...'" (or "at the end"). */
    near(pos: number): string {
        if (this.cp[pos] === 0) return "at the end of the grammar";
        let end = pos;
        while (end < pos + 24 && this.cp[end] !== 0) end++;
        const s = this.str(pos, end);
        return `at ${JSON.stringify(s.split(/\r?\n/)[0] || s)}`;
    }

    fail(kind: GrammarErrorKind, pos: number, message: string, rule?: string): never {
        const w = this.where(pos);
        throw new GrammarError(kind, `GBNF line ${w.line}, column ${w.column}: ${message}`, rule === undefined ? w : { ...w, rule });
    }

    defer(kind: GrammarErrorKind, pos: number, message: string, rule?: string): void {
        try {
            this.fail(kind, pos, message, rule);
        } catch (err) {
            this.deferred.push(err as GrammarError);
        }
    }

    // get_symbol_id: the id of a name, a new one when it is new.
    symbolId(name: string): number {
        const id = this.symbols.get(name);
        if (id !== undefined) return id;
        const next = this.symbols.size;
        this.symbols.set(name, next);
        return next;
    }

    // generate_symbol_id: base_N, where N is the number of names so far (it may replace a name already there).
    generateSymbolId(base: string): number {
        const next = this.symbols.size;
        this.symbols.set(`${base}_${next}`, next);
        return next;
    }

    addRule(id: number, rule: number[]): void {
        while (this.rules.length <= id) this.rules.push(undefined);
        const before = this.rules[id];
        this.elements += rule.length / 2 - (before ? before.length / 2 : 0);
        this.rules[id] = rule;
        if (this.rules.length > GRAMMAR_LIMITS.rules) {
            throw new GrammarError("limit", `GBNF: the grammar expands to more than ${GRAMMAR_LIMITS.rules} rules; make it smaller (fewer or smaller repetitions)`);
        }
    }

    checkSize(ruleLength: number): void {
        if (this.elements + ruleLength / 2 > GRAMMAR_LIMITS.elements) {
            throw new GrammarError("limit", `GBNF: the grammar expands to more than ${GRAMMAR_LIMITS.elements} elements; make it smaller (fewer or smaller repetitions, shorter literals)`);
        }
    }

    space(pos: number, newlineOk: boolean): number {
        const cp = this.cp;
        for (;;) {
            const c = cp[pos]!;
            if (c === C.HASH) {
                while (cp[pos] !== 0 && cp[pos] !== C.CR && cp[pos] !== C.LF) pos++;
            } else if (c === C.SPACE || c === C.TAB || (newlineOk && (c === C.CR || c === C.LF))) {
                pos++;
            } else {
                return pos;
            }
        }
    }

    name(pos: number): number {
        let end = pos;
        while (isWordChar(this.cp[end]!)) end++;
        if (end === pos) this.fail("syntax", pos, `expecting a rule name ${this.near(pos)} (names are letters, digits and '-')`);
        return end;
    }

    int(pos: number): number {
        let end = pos;
        while (isDigit(this.cp[end]!)) end++;
        if (end === pos) this.fail("syntax", pos, `expecting an integer ${this.near(pos)}`);
        return end;
    }

    /** std::stoull of cp[from, to): refuses what it would throw on. */
    uint64(from: number, to: number): bigint {
        const value = BigInt(this.str(from, to));
        if (value > UINT64_MAX) this.fail("syntax", from, `the number ${value} is too large`);
        return value;
    }

    hex(pos: number, size: number): [number, number] {
        let value = 0;
        for (let i = 0; i < size; i++) {
            const d = hexValue(this.cp[pos + i]!);
            if (d < 0) this.fail("syntax", pos, `expecting ${size} hex digits after the escape ${this.near(pos)}`);
            value = value * 16 + d;
        }
        return [value, pos + size];
    }

    char(pos: number): [number, number] {
        const cp = this.cp;
        if (cp[pos] === C.BACKSLASH) {
            const e = cp[pos + 1]!;
            switch (e) {
                case 120 /* x */: return this.hex(pos + 2, 2);
                case 117 /* u */: return this.hex(pos + 2, 4);
                case 85 /* U */: return this.hex(pos + 2, 8);
                case 116 /* t */: return [C.TAB, pos + 2];
                case 114 /* r */: return [C.CR, pos + 2];
                case 110 /* n */: return [C.LF, pos + 2];
                case C.BACKSLASH: case C.QUOTE: case C.LBRACKET: case C.RBRACKET: case C.DASH:
                    return [e, pos + 2];
                default:
                    this.fail("syntax", pos, `unknown escape ${this.near(pos)}; the escapes are \\x.. \\u.... \\U........ \\t \\r \\n \\\\ \\" \\[ \\] \\-`);
            }
        }
        if (cp[pos] !== 0) return [cp[pos]!, pos + 1];
        this.fail("syntax", pos, "unexpected end of the grammar (an unclosed string or character class?)");
    }

    token(pos: number): [number, number] {
        const cp = this.cp;
        const start = pos;
        if (cp[pos] !== C.LT) this.fail("syntax", pos, `expecting '<' ${this.near(pos)} ('!' must be followed by a token such as <[123]>)`);
        pos++;
        const w = this.where(start);
        if (cp[pos] === C.LBRACKET) {
            pos++;
            const end = this.int(pos);
            const id = this.uint64(pos, end);
            pos = end;
            if (cp[pos] !== C.RBRACKET) this.fail("syntax", pos, `expecting ']' ${this.near(pos)}`);
            pos++;
            if (cp[pos] !== C.GT) this.fail("syntax", pos, `expecting '>' ${this.near(pos)}`);
            pos++;
            this.tokens.push({ id, ...w });
            return [-1, pos];
        }
        while (cp[pos] !== 0 && cp[pos] !== C.GT) pos++;
        if (cp[pos] !== C.GT) this.fail("syntax", pos, `expecting '>' to close the token that starts ${this.near(start)}`);
        pos++;
        this.tokens.push({ text: this.str(start, pos), ...w });
        return [-1, pos];
    }

    /** A literal character or class bound: NUL, surrogates and values past U+10FFFF can never be produced. */
    checkLiteral(c: number, pos: number, ruleName: string): void {
        if (!isScalar(c)) {
            this.defer("character", pos, `the literal character ${showChar(c)} can never be generated (${c === 0 ? "NUL ends llama.cpp's text" : "not a Unicode scalar value"}); remove it`, ruleName);
        }
    }

    sequence(pos: number, ruleName: string, rule: number[], nested: boolean): number {
        const cp = this.cp;
        let lastSymStart = rule.length;
        let prevRules = 1n;

        const repeat = (min: bigint, max: bigint | typeof UNBOUNDED, at: number) => {
            const noMax = max === UNBOUNDED;
            if (lastSymStart === rule.length) this.fail("syntax", at, `expecting something before */+/?/{ ${this.near(at)}`, ruleName);
            const prev = rule.slice(lastSymStart);
            let total = 1n;
            if (!noMax && max > 0n) total = max;
            else if (min > 0n) total = min;
            if (prevRules * total > BigInt(GRAMMAR_LIMITS.repetition)) {
                this.fail("repetition", at, `a repetition expands to more than ${GRAMMAR_LIMITS.repetition} copies (llama.cpp's limit: the repeated item's rules × the count); repeat fewer times or repeat a simpler item`, ruleName);
            }
            if (!noMax && max < min) {
                // llama.cpp computes max - min unsigned and loops creating rules until memory runs out
                this.fail("limit", at, `the repetition {${min},${max}} has its maximum below its minimum; write {${max},${min}}`, ruleName);
            }
            if (noMax || max >= 2n) this.repetitions.push({ pos: at, ruleName, item: prev });
            const nOpt = noMax ? 1n : max - min;
            this.checkSize(rule.length + prev.length * (Number(min) + Number(nOpt) * 2));
            if (min === 0n) rule.length = lastSymStart;
            else for (let i = 1n; i < min; i++) rule.push(...prev);
            let lastRec = 0;
            for (let i = 0n; i < nOpt; i++) {
                const rec = prev.slice();
                const id = this.generateSymbolId(ruleName);
                if (i > 0n || noMax) rec.push(RULE_REF, noMax ? id : lastRec);
                rec.push(ALT, 0, END, 0);
                this.addRule(id, rec);
                lastRec = id;
            }
            if (nOpt > 0n) rule.push(RULE_REF, lastRec);
            prevRules *= total;
        };

        while (cp[pos] !== 0) {
            const c = cp[pos]!;
            if (c === C.QUOTE) {
                pos++;
                lastSymStart = rule.length;
                prevRules = 1n;
                while (cp[pos] !== C.QUOTE) {
                    if (cp[pos] === 0) this.fail("syntax", pos, "unexpected end of the grammar inside a string (a missing '\"'?)", ruleName);
                    const at = pos;
                    const [value, next] = this.char(pos);
                    this.checkLiteral(value, at, ruleName);
                    pos = next;
                    rule.push(CHAR, value);
                }
                pos = this.space(pos + 1, nested);
            } else if (c === C.LBRACKET) {
                const open = pos;
                pos++;
                let startType = CHAR;
                if (cp[pos] === C.CARET) {
                    pos++;
                    startType = CHAR_NOT;
                }
                lastSymStart = rule.length;
                prevRules = 1n;
                const ranges: [number, number][] = [];
                while (cp[pos] !== C.RBRACKET) {
                    if (cp[pos] === 0) this.fail("syntax", pos, "unexpected end of the grammar inside a character class (a missing ']'?)", ruleName);
                    const [value, next] = this.char(pos);
                    pos = next;
                    rule.push(lastSymStart < rule.length ? CHAR_ALT : startType, value);
                    let upper = value;
                    if (cp[pos] === C.DASH && cp[pos + 1] !== C.RBRACKET) {
                        if (cp[pos + 1] === 0) this.fail("syntax", pos, "unexpected end of the grammar inside a character class", ruleName);
                        const [end, after] = this.char(pos + 1);
                        pos = after;
                        rule.push(CHAR_RNG_UPPER, end);
                        upper = end;
                    }
                    ranges.push([value, upper]);
                }
                if (ranges.length > 0 && !classMatchesSomething(ranges, startType === CHAR_NOT)) {
                    this.defer("character", open, `the character class ${this.near(open).slice(3)} matches no character a token can produce; fix its ranges`, ruleName);
                }
                pos = this.space(pos + 1, nested);
            } else if (c === C.LT || c === C.BANG) {
                let type = TOKEN;
                if (c === C.BANG) {
                    type = TOKEN_NOT;
                    pos++;
                }
                const [, end] = this.token(pos);
                lastSymStart = rule.length;
                prevRules = 1n;
                rule.push(type, this.tokens.length - 1);
                pos = this.space(end, nested);
            } else if (isWordChar(c)) {
                const end = this.name(pos);
                const id = this.symbolId(this.str(pos, end));
                pos = this.space(end, nested);
                lastSymStart = rule.length;
                prevRules = 1n;
                rule.push(RULE_REF, id);
            } else if (c === C.LPAREN) {
                if (++this.depth > GRAMMAR_LIMITS.nesting) this.fail("limit", pos, `more than ${GRAMMAR_LIMITS.nesting} nested parentheses; name the inner parts as rules`, ruleName);
                pos = this.space(pos + 1, true);
                const before = this.symbols.size;
                const sub = this.generateSymbolId(ruleName);
                pos = this.alternates(pos, ruleName, sub, true);
                this.depth--;
                const created = this.symbols.size - before;
                prevRules = BigInt(Math.max(1, created));
                lastSymStart = rule.length;
                rule.push(RULE_REF, sub);
                if (cp[pos] !== C.RPAREN) this.fail("syntax", pos, `expecting ')' ${this.near(pos)}`, ruleName);
                pos = this.space(pos + 1, nested);
            } else if (c === C.DOT) {
                lastSymStart = rule.length;
                prevRules = 1n;
                rule.push(CHAR_ANY, 0);
                pos = this.space(pos + 1, nested);
            } else if (c === C.STAR || c === C.PLUS || c === C.QUESTION) {
                const at = pos;
                pos = this.space(pos + 1, nested);
                if (c === C.STAR) repeat(0n, UNBOUNDED, at);
                else if (c === C.PLUS) repeat(1n, UNBOUNDED, at);
                else repeat(0n, 1n, at);
            } else if (c === C.LBRACE) {
                const at = pos;
                pos = this.space(pos + 1, nested);
                if (!isDigit(cp[pos]!)) this.fail("syntax", pos, `expecting an integer ${this.near(pos)}`, ruleName);
                let end = this.int(pos);
                const min = this.uint64(pos, end);
                pos = this.space(end, nested);
                let max: bigint | typeof UNBOUNDED = UNBOUNDED;
                if (cp[pos] === C.RBRACE) {
                    max = min;
                    pos = this.space(pos + 1, nested);
                } else if (cp[pos] === C.COMMA) {
                    pos = this.space(pos + 1, nested);
                    if (isDigit(cp[pos]!)) {
                        end = this.int(pos);
                        max = this.uint64(pos, end);
                        pos = this.space(end, nested);
                    }
                    if (cp[pos] !== C.RBRACE) this.fail("syntax", pos, `expecting '}' ${this.near(pos)}`, ruleName);
                    pos = this.space(pos + 1, nested);
                } else {
                    this.fail("syntax", pos, `expecting ',' or '}' ${this.near(pos)}`, ruleName);
                }
                const limit = BigInt(GRAMMAR_LIMITS.repetition);
                if (min > limit) this.fail("repetition", at, `a repetition of at least ${min} exceeds llama.cpp's limit of ${limit}`, ruleName);
                if (max !== UNBOUNDED && max > limit) {
                    // llama.cpp silently makes it unbounded
                    if (max >= min) this.defer("limit", at, `the repetition maximum ${max} exceeds ${limit}, which llama.cpp would silently treat as unbounded; use at most ${limit}, or {${min},} for no bound`, ruleName);
                    max = UNBOUNDED;
                }
                repeat(min, max, at);
            } else {
                break;
            }
        }
        return pos;
    }

    alternates(pos: number, ruleName: string, ruleId: number, nested: boolean): number {
        const rule: number[] = [];
        pos = this.sequence(pos, ruleName, rule, nested);
        while (this.cp[pos] === C.PIPE) {
            rule.push(ALT, 0);
            pos = this.space(pos + 1, true);
            pos = this.sequence(pos, ruleName, rule, nested);
        }
        rule.push(END, 0);
        this.checkSize(rule.length);
        this.addRule(ruleId, rule);
        return pos;
    }

    rule(pos: number): number {
        const cp = this.cp;
        const nameEnd = this.name(pos);
        const name = this.str(pos, nameEnd);
        pos = this.space(nameEnd, false);
        const id = this.symbolId(name);
        if (!(cp[pos] === C.COLON && cp[pos + 1] === C.COLON && cp[pos + 2] === C.EQ)) {
            this.fail("syntax", pos, `expecting ::= after the rule name "${name}" ${this.near(pos)}`, name);
        }
        pos = this.space(pos + 3, true);
        pos = this.alternates(pos, name, id, false);
        if (cp[pos] === C.CR) pos += cp[pos + 1] === C.LF ? 2 : 1;
        else if (cp[pos] === C.LF) pos++;
        else if (cp[pos] !== 0) this.fail("syntax", pos, `expecting the end of the line ${this.near(pos)} (one rule per line; a '|' may start a line only inside parentheses)`, name);
        return this.space(pos, true);
    }

    parse(): void {
        let pos = this.space(0, true);
        while (this.cp[pos] !== 0) pos = this.rule(pos);
    }
}

/** Whether a character class (its [lo, hi] members, negated or not) matches a character a token can produce. */
function classMatchesSomething(ranges: [number, number][], negated: boolean): boolean {
    // the characters tokens can produce: [1, 0xD7FF] and [0xE000, 0x10FFFF]
    const valid: [number, number][] = [[1, 0xd7ff], [0xe000, 0x10ffff]];
    if (!negated) return ranges.some(([lo, hi]) => valid.some(([a, b]) => lo <= hi && lo <= b && hi >= a));
    // negated: does some valid character fall outside every member?
    const members = ranges.filter(([lo, hi]) => lo <= hi).sort((x, y) => x[0] - y[0]);
    for (const [a, b] of valid) {
        let next = a; // lowest character of [a, b] not covered yet
        for (const [lo, hi] of members) {
            if (lo > next) break;
            if (hi >= next) next = hi + 1;
        }
        if (next <= b) return true;
    }
    return false;
}

/** The alternatives of a flat rule, as [start, end) element index ranges. */
function alternatives(rule: number[]): [number, number][] {
    const out: [number, number][] = [];
    let start = 0;
    for (let i = 0; i < rule.length; i += 2) {
        if (rule[i] === ALT || rule[i] === END) {
            out.push([start, i]);
            start = i + 2;
        }
    }
    return out;
}

/**
 * Parses a GBNF grammar as llama.cpp does and checks it (see the module comment). `root` is the start rule's name
 * (llama.cpp's grammar_root; this library always uses "root"). Throws GrammarError (a RangeError,
 * ERR_INVALID_ARGUMENT); a non-string is a PhiTypeError.
 */
export function checkGbnf(text: unknown, options: { root?: string; vocab?: GbnfVocab } = {}): ParsedGbnf {
    if (typeof text !== "string") throw new PhiTypeError(`Expected "grammar" to be GBNF text (a string), got ${text === null ? "null" : typeof text}`);
    const rootName = options.root ?? "root";
    const key = `${rootName}\u0000${text}`;
    let parsed = parsedCache.get(key);
    if (parsed) {
        parsedCache.delete(key);
    } else {
        parsed = parseAndCheck(text, rootName);
        if (parsedCache.size >= PARSED_CACHE_SIZE) parsedCache.delete(parsedCache.keys().next().value!);
    }
    parsedCache.set(key, parsed);
    if (options.vocab) checkGbnfTokens(parsed.tokens, options.vocab);
    return parsed;
}

/** Grammars that passed the checks, most recently used last (an agent sends the same one again and again). */
const parsedCache = new Map<string, ParsedGbnf>();
const PARSED_CACHE_SIZE = 32;

function parseAndCheck(text: string, rootName: string): ParsedGbnf {
    if (text.length > GRAMMAR_LIMITS.chars) {
        throw new GrammarError("limit", `GBNF: the grammar is ${text.length} characters; at most ${GRAMMAR_LIMITS.chars} are accepted`);
    }
    if (!text.isWellFormed()) throw new GrammarError("character", "GBNF: the grammar contains a lone UTF-16 surrogate; it cannot be encoded as UTF-8 (fix the string, e.g. with .toWellFormed())");
    const nul = text.indexOf("\u0000");
    const p = new Parser(nul >= 0 ? text.slice(0, nul) : text);
    if (nul >= 0) p.fail("character", nul, "the grammar contains a NUL character, where llama.cpp would stop reading it; remove it");
    p.parse();

    // llama.cpp's own checks, in its order: every rule defined, some rule, the root, left recursion.
    const names: string[] = [];
    for (const [name, id] of p.symbols) names[id] = name;
    const nameOf = (id: number) => names[id] ?? `#${id}`;
    const rules = p.rules;
    const undefinedRule = (id: number, from?: number): GrammarError => {
        const n = names[id];
        return new GrammarError("undefined-rule", n === undefined
            ? `GBNF: a rule is used but never defined`
            : `GBNF: the rule "${n}" is used${from !== undefined ? ` by "${nameOf(from)}"` : ""} but never defined; add a line "${n} ::= ..."`, n === undefined ? {} : { rule: n });
    };
    for (let i = 0; i < rules.length; i++) {
        const rule = rules[i];
        if (rule === undefined) throw undefinedRule(i);
        for (let k = 0; k < rule.length; k += 2) {
            if (rule[k] === RULE_REF && (rule[k + 1]! >= rules.length || rules[rule[k + 1]!] === undefined)) throw undefinedRule(rule[k + 1]!, i);
        }
    }
    if (rules.length === 0) throw new GrammarError("empty", `GBNF: the grammar has no rules; write at least "${rootName} ::= ..."`);
    const root = p.symbols.get(rootName);
    if (root === undefined) throw new GrammarError("no-root", `GBNF: the grammar has no "${rootName}" rule, where generation starts; name the start rule "${rootName}"`);
    const defined = rules as number[][];

    // Left recursion as llama.cpp detects it: a rule reference counts while everything before it in its alternative
    // is a reference to a rule that has an empty alternative of its own.
    const directEmpty = defined.map((rule) => alternatives(rule).some(([a, b]) => a === b));
    const leftEdges = (nullable: readonly boolean[]) => defined.map((rule) => {
        const edges: number[] = [];
        for (const [a, b] of alternatives(rule)) {
            for (let i = a; i < b; i += 2) {
                if (rule[i] !== RULE_REF) break;
                edges.push(rule[i + 1]!);
                if (!nullable[rule[i + 1]!]) break;
            }
        }
        return edges;
    });
    const llamaEdges = leftEdges(directEmpty);
    const llamaCycle = findCycle(llamaEdges);
    if (llamaCycle) {
        throw new GrammarError("left-recursion", `GBNF: left recursion: ${llamaCycle.map(nameOf).join(" → ")} can begin with itself, which llama.cpp refuses; ` +
            `move the recursive reference after something that consumes text (e.g. "x ::= item x?" instead of "x ::= x? item")`, { rule: nameOf(llamaCycle[0]!) });
    }

    // What llama.cpp accepts but must not get.
    if (p.deferred.length > 0) throw p.deferred[0]!;
    const nullable = nullableRules(defined);
    const fullEdges = leftEdges(nullable);
    const cycle = findCycle(fullEdges);
    if (cycle) {
        throw new GrammarError("hidden-left-recursion", `GBNF: left recursion through rules that may be empty: ${cycle.map(nameOf).join(" → ")} can begin with itself ` +
            `(llama.cpp would loop forever on it); make the rules in between consume text, or move the recursive reference to the end`, { rule: nameOf(cycle[0]!) });
    }
    for (const rep of p.repetitions) {
        let empty = true;
        for (let i = 0; i < rep.item.length && empty; i += 2) empty = rep.item[i] === RULE_REF && nullable[rep.item[i + 1]!]!;
        if (empty) {
            // every way to split the text between the copies is a parse stack llama.cpp carries along: nested, they multiply
            p.fail("limit", rep.pos, `this repeats something that may match the empty string, which makes the grammar ambiguous in a way that ` +
                `multiplies llama.cpp's parse stacks; repeat a part that always consumes text (e.g. "x{0,20}" instead of "(x{0,4}){0,5}")`, rep.ruleName);
        }
    }
    const reachable = reachableRules(defined, root);
    const productive = productiveRules(defined);
    for (let i = 0; i < defined.length; i++) {
        if (reachable[i] && !productive[i]) {
            throw new GrammarError("unfinishable", `GBNF: the rule "${nameOf(i)}" can never finish: each of its alternatives needs a rule that never finishes` +
                `${nameOf(i) === rootName ? "" : ` (it is reachable from "${rootName}")`}; give it an alternative that ends`, { rule: nameOf(i) });
        }
    }
    checkPaths(defined, llamaEdges, fullEdges, nullable, nameOf);
    return { rules: defined, names, root, tokens: p.tokens };
}

/** Rules that can match the empty string (a fixpoint over their alternatives). */
function nullableRules(rules: number[][]): boolean[] {
    const nullable = rules.map(() => false);
    for (let changed = true; changed;) {
        changed = false;
        for (let r = 0; r < rules.length; r++) {
            if (nullable[r]) continue;
            const rule = rules[r]!;
            for (const [a, b] of alternatives(rule)) {
                let all = true;
                for (let i = a; i < b && all; i += 2) all = rule[i] === RULE_REF && nullable[rule[i + 1]!]!;
                if (all) {
                    nullable[r] = true;
                    changed = true;
                    break;
                }
            }
        }
    }
    return nullable;
}

/** Rules that can match some finite text (every reference of some alternative can). */
function productiveRules(rules: number[][]): boolean[] {
    const productive = rules.map(() => false);
    for (let changed = true; changed;) {
        changed = false;
        for (let r = 0; r < rules.length; r++) {
            if (productive[r]) continue;
            const rule = rules[r]!;
            for (const [a, b] of alternatives(rule)) {
                let all = true;
                for (let i = a; i < b && all; i += 2) all = rule[i] !== RULE_REF || productive[rule[i + 1]!]!;
                if (all) {
                    productive[r] = true;
                    changed = true;
                    break;
                }
            }
        }
    }
    return productive;
}

function reachableRules(rules: number[][], root: number): boolean[] {
    const seen = rules.map(() => false);
    const todo = [root];
    seen[root] = true;
    while (todo.length > 0) {
        const rule = rules[todo.pop()!]!;
        for (let i = 0; i < rule.length; i += 2) {
            if (rule[i] === RULE_REF && !seen[rule[i + 1]!]) {
                seen[rule[i + 1]!] = true;
                todo.push(rule[i + 1]!);
            }
        }
    }
    return seen;
}

/** A cycle in a graph given as adjacency lists (iterative DFS), as the list of its nodes; undefined when acyclic. */
function findCycle(edges: number[][]): number[] | undefined {
    const state = new Uint8Array(edges.length); // 0 new, 1 on the path, 2 done
    const path: number[] = [];
    const next: number[] = [];
    for (let start = 0; start < edges.length; start++) {
        if (state[start] !== 0) continue;
        path.push(start), next.push(0), (state[start] = 1);
        while (path.length > 0) {
            const node = path[path.length - 1]!;
            const k = next[next.length - 1]!;
            if (k >= edges[node]!.length) {
                state[node] = 2;
                path.pop(), next.pop();
                continue;
            }
            next[next.length - 1] = k + 1;
            const to = edges[node]![k]!;
            if (state[to] === 1) return path.slice(path.indexOf(to)).concat(to);
            if (state[to] === 0) path.push(to), next.push(0), (state[to] = 1);
        }
    }
    return undefined;
}

/**
 * The costs of a grammar that has no left recursion, against GRAMMAR_LIMITS: the depth and the number of calls of
 * llama.cpp's recursive left-recursion check (it follows every path through the rules a rule may begin with,
 * without remembering what it already checked), and the number of parse stacks a rule may begin with.
 */
function checkPaths(rules: number[][], llamaEdges: number[][], fullEdges: number[][], nullable: boolean[], nameOf: (id: number) => string): void {
    const order = topologicalOrder(fullEdges); // every edge goes from a later to an earlier entry
    const depth = new Float64Array(rules.length);
    const calls = new Float64Array(rules.length);
    for (const r of order) {
        let d = 0;
        for (const to of fullEdges[r]!) d = Math.max(d, depth[to]! + 1);
        depth[r] = d;
        let c = 1;
        for (const to of llamaEdges[r]!) c += calls[to]!;
        calls[r] = Math.min(c, 1e300);
        if (d > GRAMMAR_LIMITS.leftDepth) {
            throw new GrammarError("limit", `GBNF: the rule "${nameOf(r)}" begins with a chain of more than ${GRAMMAR_LIMITS.leftDepth} rules, one inside the other; make the chain shorter`, { rule: nameOf(r) });
        }
    }
    let total = 0;
    for (let r = 0; r < rules.length; r++) total += calls[r]!;
    if (total > GRAMMAR_LIMITS.leftPaths) {
        let worst = 0;
        for (let r = 1; r < rules.length; r++) if (calls[r]! > calls[worst]!) worst = r;
        throw new GrammarError("limit", `GBNF: the rules a rule may begin with branch into more than ${GRAMMAR_LIMITS.leftPaths} paths (from "${nameOf(worst)}"), ` +
            `which llama.cpp's left-recursion check walks one by one; use fewer alternatives that begin with the same rules`, { rule: nameOf(worst) });
    }
    // Ways each rule may begin: its alternatives, each expanding its leading references (and what follows a
    // leading reference that may be empty). llama.cpp keeps one stack for each.
    const starts = new Float64Array(rules.length);
    for (const r of order) {
        const rule = rules[r]!;
        let n = 0;
        for (const [a, b] of alternatives(rule)) {
            let k = 0;
            let i = a;
            for (; i < b; i += 2) {
                if (rule[i] !== RULE_REF) {
                    k += 1;
                    break;
                }
                k += starts[rule[i + 1]!]!;
                if (!nullable[rule[i + 1]!]) break;
            }
            if (i >= b) k += 1; // the alternative may end here
            n += k;
        }
        starts[r] = Math.min(n, 1e300);
        if (n > GRAMMAR_LIMITS.stacks) {
            throw new GrammarError("limit", `GBNF: the rule "${nameOf(r)}" may begin in more than ${GRAMMAR_LIMITS.stacks} ways (alternatives of alternatives), ` +
                `each a parse stack llama.cpp carries for every token; use fewer alternatives, or make them begin with different text`, { rule: nameOf(r) });
        }
    }
}

/** Nodes ordered so that every edge points to an earlier node (the graph is acyclic). Iterative. */
function topologicalOrder(edges: number[][]): number[] {
    const state = new Uint8Array(edges.length);
    const order: number[] = [];
    const stack: number[] = [];
    const next: number[] = [];
    for (let start = 0; start < edges.length; start++) {
        if (state[start]) continue;
        stack.push(start), next.push(0), (state[start] = 1);
        while (stack.length > 0) {
            const node = stack[stack.length - 1]!;
            const k = next[next.length - 1]!;
            if (k >= edges[node]!.length) {
                order.push(node);
                stack.pop(), next.pop();
                continue;
            }
            next[next.length - 1] = k + 1;
            const to = edges[node]![k]!;
            if (!state[to]) stack.push(to), next.push(0), (state[to] = 1);
        }
    }
    return order;
}

/**
 * A grammar's token references (ParsedGbnf.tokens) against a model's vocabulary: llama.cpp matches <[id]> by id
 * and tokenizes <text>. Throws GrammarError (kind "token").
 */
export function checkGbnfTokens(tokens: readonly GbnfTokenRef[], vocab: GbnfVocab): void {
    for (const t of tokens) {
        const at = `GBNF line ${t.line}, column ${t.column}`;
        let id: number;
        if (t.id !== undefined) {
            if (t.id >= BigInt(vocab.size)) throw new GrammarError("token", `${at}: the token <[${t.id}]> is not in this model's vocabulary (ids 0 to ${vocab.size - 1})`, t);
            id = Number(t.id);
        } else {
            const ids = vocab.tokenize(t.text!);
            if (ids.length !== 1) {
                throw new GrammarError("token", `${at}: ${t.text} is ${ids.length} tokens, not one; a named token must be exactly one token of the vocabulary (or use <[id]>)`, t);
            }
            id = ids[0]!;
        }
        if (vocab.eog.includes(id)) {
            throw new GrammarError("token", `${at}: the token ${t.text ?? `<[${id}]>`} ends generation; a grammar cannot ask for it (generation ends by itself when the grammar is complete)`, t);
        }
        if (!vocab.hasText(id)) throw new GrammarError("token", `${at}: the token ${t.text ?? `<[${id}]>`} has no text (a control token) and is never generated`, t);
    }
}

/** A GBNF string literal ("...") for `text`, escaping what the format needs escaped. */
export function gbnfLiteral(text: string): string {
    let out = '"';
    for (const ch of text) {
        const c = ch.codePointAt(0)!;
        if (ch === '"' || ch === "\\") out += "\\" + ch;
        else if (c === 10) out += "\\n";
        else if (c === 13) out += "\\r";
        else if (c === 9) out += "\\t";
        else if (c < 0x20 || c === 0x7f) out += "\\x" + c.toString(16).padStart(2, "0");
        else out += ch;
    }
    return out + '"';
}
