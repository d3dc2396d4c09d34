/** quantizeModel / `phi-agent quantize`: the target types come from the one file-type table (src/gguf/types.ts). */
import { expect } from "chai";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import * as lib from "../src/index.js";
import { LLAMA_FILE_TYPE_NAMES } from "../src/gguf/types.js";
import { tinyModel } from "./helpers/models.js";

const { PhiModel, QUANT_TYPES, quantizeModel } = lib;
const CLI = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));

async function caught(fn: () => unknown): Promise<unknown> {
    try {
        await fn();
    } catch (err) {
        return err;
    }
    throw new Error("expected a throw");
}

describe("quantizeModel", function () {
    let dir: string;
    before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-quant-")); });
    after(() => { fs.rmSync(dir, { recursive: true, force: true }); });

    it("refuses inherited property names as types (toString, __proto__, constructor), before reading the input", async () => {
        for (const type of ["toString", "__proto__", "constructor", "hasOwnProperty", "valueOf"]) {
            const err = await caught(() => quantizeModel(path.join(dir, "missing.gguf"), path.join(dir, "out.gguf"), { type: type as never }));
            expect(err, type).to.be.instanceOf(RangeError);
            expect((err as Error).message, type).to.match(/Expected "type" to be one of f32, f16/);
            expect((err as { code?: string }).code).to.equal("ERR_INVALID_ARGUMENT");
        }
        expect(Object.keys(QUANT_TYPES)).to.not.include("toString");
    });

    it("phi-agent quantize --type toString is a usage error (exit 2), like any unknown type", async () => {
        for (const type of ["toString", "__proto__", "q9_k"]) {
            const run = await promisify(execFile)(process.execPath, [CLI, "quantize", "--model", path.join(dir, "missing.gguf"), "--out", path.join(dir, "o.gguf"), "--type", type])
                .then(() => ({ code: 0, stderr: "" }), (e: { code: number; stderr: string }) => e);
            expect(run.code, `${type}: ${run.stderr}`).to.equal(2);
            expect(run.stderr).to.match(/--type must be one of/);
        }
    });

    it("offers every file type of the table that llama.cpp quantizes without an imatrix, q3_k_s and q3_k_l included; names match the table", () => {
        for (const [tag, id] of Object.entries(QUANT_TYPES)) expect(LLAMA_FILE_TYPE_NAMES[id]!.toLowerCase(), tag).to.equal(tag);
        expect(QUANT_TYPES).to.include.keys("q3_k_s", "q3_k_m", "q3_k_l", "q4_k_m", "q8_0", "f16", "bf16");
    });

    it("writes a q3_k_s model that loads with quantization \"q3_k_s\"", async function () {
        this.timeout(120000);
        const out = path.join(dir, "tiny-q3_k_s.gguf");
        await quantizeModel(await tinyModel("f32"), out, { type: "q3_k_s" as never, threads: 1 });
        const m = await PhiModel.load({ modelPath: out, threads: 1, contextSize: 32, sequences: 1 });
        try {
            expect(m.info.quantization).to.equal("q3_k_s");
            expect((await m.generate("Hello", { maxTokens: 2 })).tokens).to.have.length(2);
        } finally {
            await m.dispose();
        }
    });
});
