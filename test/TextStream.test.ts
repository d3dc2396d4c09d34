/**
 * native/TextStream: the UTF-8 and stop-string hold-back of streamed text, driven through the addon's
 * `textStreamRun` (the very class NativeEngine::ProcessToken / Finish use, chunks made into JS strings as CallJs
 * makes them). Unit cases, then a seeded property test over 10 000 random cases.
 */
import { expect } from "chai";
import { loadBinding } from "../src/native/binding.js";
import { prng } from "../scripts/malformed-corpus.js";

type Ending = "eos" | "length" | "abort";
const enc = new TextEncoder();
const bytes = (...parts: (string | number[])[]) => parts.map((p) => (typeof p === "string" ? enc.encode(p) : Uint8Array.from(p)));

function run(pieces: Uint8Array[], stops: string[], ending: Ending = "eos") {
    return loadBinding().textStreamRun(pieces, stops, ending);
}

describe("TextStream (native, through textStreamRun)", function () {
    it("holds back a stop string's start while a token is only half a character (issue: 'ab' + 'x' + C3 + A9, stop 'xé')", function () {
        const r = run(bytes("ab", "x", [0xc3], [0xa9]), ["xé"]);
        expect(r.text).to.equal("ab");
        expect(r.stopped).to.equal(true);
        expect(r.chunks.join("")).to.equal("ab");
        expect(r.chunks).to.deep.equal(["ab", "", "", ""]);
    });

    it("releases the held-back tail at EOS, so the chunks add up to the text", function () {
        const r = run(bytes("hello", " wor"), [" world"], "eos");
        expect(r.text).to.equal("hello wor");
        expect(r.chunks).to.deep.equal(["hello", "", " wor"]);
    });

    it("releases the held-back tail with the last token when maxTokens ends it", function () {
        const r = run(bytes("hello", " wor"), [" world"], "length");
        expect(r.chunks).to.deep.equal(["hello", " wor"]);
        expect(r.text).to.equal("hello wor");
    });

    it("releases an incomplete character at the end as U+FFFD, in the chunks and the text alike", function () {
        const r = run(bytes("ab", [0xe6, 0x97]), [], "abort");
        expect(r.text).to.equal("ab\ufffd");
        expect(r.chunks.join("")).to.equal(r.text);
    });

    it("streams a 4-byte character split over four tokens once it is complete", function () {
        const b = enc.encode("🤖");
        const r = run([...b].map((x) => Uint8Array.of(x)), []);
        expect(r.chunks).to.deep.equal(["", "", "", "🤖"]);
    });

    it("finds a stop string that spans tokens and cuts before it; later tokens are not consumed", function () {
        const r = run(bytes("a", "bc", "d", "e", "f"), ["bcd"]);
        expect(r.text).to.equal("a");
        expect(r.consumed).to.equal(3);
        expect(r.chunks.join("")).to.equal("a");
    });

    it("cuts at the earliest stop string found with a token; a stop at the very start leaves no text", function () {
        expect(run(bytes("one two three"), ["three", "two"]).text).to.equal("one ");
        const r = run(bytes("STOP", "more"), ["STOP"]);
        expect(r.text).to.equal("");
        expect(r.chunks).to.deep.equal([""]);
    });

    it("holds back for the longest matching stop prefix among several stops", function () {
        // "a" and "ab" may start "abz"; then "bc" may start "bcz", so "a" is free; at the end everything is
        const r = run(bytes("xa", "b", "c", "d"), ["abz", "bcz"]);
        expect(r.chunks).to.deep.equal(["x", "", "a", "bcd"]);
        expect(r.text).to.equal("xabcd");
    });

    describe("property: chunks always add up to the text, and no stop string appears in it (10 000 seeded cases)", function () {
        const ALPHABET = ["a", "b", "x", "y", " ", "\n", "é", "ü", "日", "本", "🤖", "👩"];
        const SEED = 20261202;
        const CASES = 10_000;

        it(`${CASES} cases (seed ${SEED}): random pieces (split multi-byte characters, stray bytes) × random stops × eos/length/abort`, function () {
            const rand = prng(SEED);
            const int = (n: number) => Math.floor(rand() * n);
            const pick = <T>(xs: readonly T[]) => xs[int(xs.length)]!;
            const decoder = new TextDecoder("utf-8");
            const counts = { stopped: 0, held: 0, strayBytes: 0, splitChars: 0 };
            for (let c = 0; c < CASES; c++) {
                const chars = Array.from({ length: int(24) }, () => pick(ALPHABET));
                const full = chars.join("");
                // bytes of the text, sometimes with a stray byte (a byte-level token that is no character) mixed in
                let all = Array.from(enc.encode(full));
                if (rand() < 0.15) {
                    all.splice(int(all.length + 1), 0, 0x80 + int(0x80));
                    counts.strayBytes++;
                }
                const ending: Ending = pick(["eos", "length", "abort"] as const);
                if (ending === "abort" && all.length > 0) all = all.slice(0, int(all.length + 1)); // may cut a character
                // pieces of 0..5 bytes, cut anywhere (inside characters too)
                const pieces: Uint8Array[] = [];
                for (let i = 0; i < all.length;) {
                    const n = int(6);
                    pieces.push(Uint8Array.from(all.slice(i, i + n)));
                    if (n > 0 && i + n < all.length && (all[i + n]! & 0xc0) === 0x80) counts.splitChars++;
                    i += n;
                }
                // stops: random strings, or pieces of the text itself (so they occur)
                const stops: string[] = [];
                for (let k = int(4); k > 0; k--) {
                    if (chars.length > 0 && rand() < 0.6) {
                        const from = int(chars.length);
                        stops.push(chars.slice(from, from + 1 + int(3)).join(""));
                    } else {
                        stops.push(Array.from({ length: 1 + int(3) }, () => pick(ALPHABET)).join(""));
                    }
                }
                const r = run(pieces, stops, ending);
                const label = `case ${c}: pieces ${JSON.stringify(pieces.map((p) => Array.from(p)))}, stops ${JSON.stringify(stops)}, ${ending}`;
                const streamed = r.chunks.join("");
                expect(streamed, label).to.equal(r.text);
                for (const s of stops) expect(r.text.includes(s), `${label}: stop ${JSON.stringify(s)} in ${JSON.stringify(r.text)}`).to.equal(false);
                // the text is what the tokens said, up to the first stop string
                const whole = decoder.decode(Uint8Array.from(all));
                expect(whole.startsWith(r.text), label).to.equal(true);
                if (r.stopped) {
                    counts.stopped++;
                    expect(stops.some((s) => whole.startsWith(r.text + s)), label).to.equal(true);
                } else {
                    expect(r.text, label).to.equal(whole);
                    expect(r.consumed, label).to.equal(pieces.length);
                }
                // one chunk per consumed token, plus at most one for what was held back until the end
                expect(r.chunks.length - r.consumed, label).to.be.within(0, 1);
                if (r.chunks.length > r.consumed) counts.held++;
            }
            this.test!.title += ` (${counts.stopped} stopped, ${counts.held} released a held-back tail at the end, ${counts.splitChars} characters split, ${counts.strayBytes} with a stray byte)`;
            expect(counts.stopped).to.be.greaterThan(CASES / 10);
            expect(counts.held).to.be.greaterThan(CASES / 20);
        });
    });
});
