/** Phi-2's prompt formats (src/prompt/phi2.ts): the QA form, the multi-turn chat form and its stop strings. */
import { expect } from "chai";
import { formatPhi2Chat, formatPhi2Prompt, PHI2_STOP, PhiRangeError, PhiTypeError } from "../src/index.js";

describe("Phi-2 prompt formats", function () {
    it("formatPhi2Prompt: Instruct: …\\nOutput: (with an optional system line)", function () {
        expect(formatPhi2Prompt({ instruct: "Write a haiku about rain." })).to.equal("Instruct: Write a haiku about rain.\nOutput:");
        expect(formatPhi2Prompt({ instruct: "  Add 2 and 3.\n" })).to.equal("Instruct: Add 2 and 3.\nOutput:");
        expect(formatPhi2Prompt({ instruct: "Add 2 and 3.", system: "Be brief." })).to.equal("Instruct: Be brief.\nAdd 2 and 3.\nOutput:");
        expect(() => formatPhi2Prompt({ instruct: 5 as never })).to.throw(PhiTypeError, /instruct/);
    });

    it("formatPhi2Chat: one user turn is the QA form; system lines come first", function () {
        expect(formatPhi2Chat([{ role: "user", content: "Hi" }])).to.deep.equal({ prompt: "Instruct: Hi\nOutput:", stop: [...PHI2_STOP] });
        expect(formatPhi2Chat([{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }]).prompt).to.equal("Be brief.\nInstruct: Hi\nOutput:");
        expect(formatPhi2Chat([{ role: "developer", content: "D" }, { role: "user", content: "Hi" }]).prompt).to.equal("D\nInstruct: Hi\nOutput:");
    });

    it("formatPhi2Chat: several turns are User:/Assistant: lines ending in Assistant:; a last assistant message is a prefill", function () {
        const turns = [
            { role: "system" as const, content: "You are terse." },
            { role: "user" as const, content: "What is 2 + 2?" },
            { role: "assistant" as const, content: "4." },
            { role: "user" as const, content: "And 3 + 3?" },
        ];
        expect(formatPhi2Chat(turns).prompt).to.equal("You are terse.\nUser: What is 2 + 2?\nAssistant: 4.\nUser: And 3 + 3?\nAssistant:");
        expect(formatPhi2Chat([...turns, { role: "assistant", content: "It is" }]).prompt).to.match(/\nUser: And 3 \+ 3\?\nAssistant: It is$/);
        expect(formatPhi2Chat([{ role: "user", content: "a" }, { role: "assistant", content: "" }]).prompt).to.equal("User: a\nAssistant:");
        expect(PHI2_STOP).to.deep.equal(["\nUser:", "\nInstruct:"]);
    });

    it("formatPhi2Chat refuses what it cannot write, naming the message", function () {
        expect(() => formatPhi2Chat([])).to.throw(PhiRangeError, /no user message/);
        expect(() => formatPhi2Chat([{ role: "assistant", content: "x" }])).to.throw(PhiRangeError, /no user message/);
        expect(() => formatPhi2Chat([{ role: "user", content: "x" }, { role: "system", content: "late" }])).to.throw(PhiRangeError, /messages\[1\]/);
        expect(() => formatPhi2Chat([{ role: "tool" as never, content: "x" }])).to.throw(PhiRangeError, /messages\[0\]\.role/);
        expect(() => formatPhi2Chat([{ role: "user", content: 3 as never }])).to.throw(PhiTypeError, /messages\[0\]\.content/);
    });
});
