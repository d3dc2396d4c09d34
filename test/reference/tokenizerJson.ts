/**
 * The tokenizer oracle: a Hugging Face `tokenizer.json` built from the same vocabulary, merges and added whitespace
 * tokens our test models carry (src/testModel/vocab.ts), laid out like microsoft/phi-2's own tokenizer.json, and
 * loaded with @huggingface/tokenizers (the tokenizer library of transformers.js v4) from the written file, offline.
 *
 * Phi-2's tokenizer.json: no normalizer; ByteLevel pre-tokenizer (GPT-2 regex, no prefix space); ByteLevel decoder;
 * a BPE model with GPT-2's 50257-entry vocab.json (ids 0..50256) and 50000 merges; added_tokens: 50256
 * "<|endoftext|>" (special) and 50257..50294, runs of 31..2 spaces and 9..2 tabs (not special, normalized).
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import {
    ENDOFTEXT_ID, GPT2_VOCAB_SIZE, loadPhi2Vocab, phi2AddedWhitespaceTokens, type Phi2Vocab,
} from "../../src/testModel/vocab.js";

export interface TokenizerJsonOptions {
    /**
     * true (default, like Phi-2's file): "<|endoftext|>" is a special added token, so HF splits it out of any text
     * (what our tokenize(text, { special: true }) does). false: it is left out of added_tokens, so the literal text
     * is byte-level BPE'd like any other text (what our default tokenize(text) does).
     */
    endoftextAddedToken?: boolean;
}

interface AddedTokenJson {
    id: number;
    content: string;
    single_word: boolean;
    lstrip: boolean;
    rstrip: boolean;
    normalized: boolean;
    special: boolean;
}

/** The tokenizer.json object. */
export function phi2TokenizerJson(vocab: Phi2Vocab, options: TokenizerJsonOptions = {}): Record<string, unknown> {
    const bpeVocab: Record<string, number> = {};
    for (let id = 0; id < GPT2_VOCAB_SIZE; id++) bpeVocab[vocab.tokens[id]!] = id;
    const added: AddedTokenJson[] = [];
    if (options.endoftextAddedToken !== false) {
        added.push({ id: ENDOFTEXT_ID, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    }
    for (const [id, content] of phi2AddedWhitespaceTokens()) {
        added.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: true, special: false });
    }
    return {
        version: "1.0",
        truncation: null,
        padding: null,
        added_tokens: added,
        normalizer: null,
        pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
        post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
        decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
        model: {
            type: "BPE",
            dropout: null,
            unk_token: null,
            continuing_subword_prefix: "",
            end_of_word_suffix: "",
            fuse_unk: false,
            byte_fallback: false,
            vocab: bpeVocab,
            merges: vocab.merges,
        },
    };
}

/** Phi-2's tokenizer_config.json (the parts a tokenizer reads). */
export function phi2TokenizerConfig(): Record<string, unknown> {
    return {
        add_prefix_space: false,
        bos_token: "<|endoftext|>",
        eos_token: "<|endoftext|>",
        unk_token: "<|endoftext|>",
        clean_up_tokenization_spaces: true,
        model_max_length: 2048,
        tokenizer_class: "CodeGenTokenizer",
        return_token_type_ids: false,
    };
}

/** Writes tokenizer.json + tokenizer_config.json into `dir`; returns the tokenizer.json path. */
export async function writePhi2TokenizerJson(dir: string, options: TokenizerJsonOptions = {}): Promise<string> {
    await mkdir(dir, { recursive: true });
    const vocab = await loadPhi2Vocab();
    const file = join(dir, "tokenizer.json");
    await writeFile(file, JSON.stringify(phi2TokenizerJson(vocab, options)));
    await writeFile(join(dir, "tokenizer_config.json"), JSON.stringify(phi2TokenizerConfig(), null, 2));
    return file;
}

/** The HF tokenizer over a folder written by writePhi2TokenizerJson (read from disk: no hub, no network). */
export class HFOracle {
    private constructor(readonly tokenizer: Tokenizer) {}

    static async fromDir(dir: string): Promise<HFOracle> {
        const json = JSON.parse(await readFile(join(dir, "tokenizer.json"), "utf8")) as object;
        const config = JSON.parse(await readFile(join(dir, "tokenizer_config.json"), "utf8")) as object;
        return new HFOracle(new Tokenizer(json, config));
    }

    /** Token ids of `text`, no special tokens added around it (Phi-2 adds none anyway). */
    encode(text: string): number[] {
        return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    }

    /** Text of `ids`, without HF's "clean up tokenization spaces" rewriting (llama.cpp does not do it either). */
    decode(ids: number[]): string {
        if (ids.length === 0) return "";
        return this.tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    }
}

/** llama.cpp's tokenizer test vectors: `<vocab>.gguf.inp` (texts split by "\n__ggml_vocab_test__\n") and `.out` (ids per line). */
export async function readLlamaVocabTests(inpPath: string, outPath: string): Promise<{ text: string; ids: number[] }[]> {
    const raw = await readFile(inpPath, "utf8");
    const sep = "\n__ggml_vocab_test__\n";
    const texts: string[] = [];
    let pos = 0;
    while (pos < raw.length) {
        const next = raw.indexOf(sep, pos);
        if (next < 0) {
            texts.push(raw.slice(pos));
            break;
        }
        texts.push(raw.slice(pos, next));
        pos = next + sep.length;
    }
    const lines = (await readFile(outPath, "utf8")).split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    if (lines.length !== texts.length) throw new Error(`${inpPath}: ${texts.length} texts but ${outPath} has ${lines.length} lines`);
    return texts.map((text, i) => {
        const line = lines[i]!.trim();
        return { text, ids: line === "" ? [] : line.split(" ").map(Number) };
    });
}
