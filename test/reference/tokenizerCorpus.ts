/**
 * Strings for the tokenizer oracle: code with indentation and tabs, runs of 2..40 spaces, CRLF, many scripts, emoji
 * (incl. ZWJ sequences, flags, keycaps, skin tones), numbers, URLs, a literal <|endoftext|>, the empty string, a
 * 20 kB string, and seeded random mixes of all of these. No NUL characters and no lone surrogates (tokenize()
 * refuses those with a RangeError, see badArguments.test.ts).
 */
import { prng as rng } from "../../scripts/malformed-corpus.js";

const CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class Agent:\n    def __init__(self, name: str) -> None:\n        self.name = name\n\n    def act(self):\n        pass\n",
    "function add(a, b) {\n  return a + b;\n}\n\nconsole.log(add(1, 2));\n",
    "int main(void)\n{\n\tint i;\n\tfor (i = 0; i < 10; i++) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}\n",
    "all: build\n\nbuild:\n\t$(CC) -o app main.c\n\t\t@echo done\n",
    "server:\n  port: 8080\n  hosts:\n    - a.example.com\n    - b.example.com\n",
    "if x:\n\tif y:\n\t\tif z:\n\t\t\tif w:\n\t\t\t\tprint('deep')\n",
    "    leading four spaces",
    "trailing spaces    ",
    "\ttab first",
    "mixed \t \t whitespace\t\t\t  \t",
    "SELECT id, name\n  FROM users\n WHERE age >= 18\n ORDER BY name;",
    "<div class=\"agent\">\n    <span>{{ name }}</span>\n</div>",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
    "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\n",
    "    def method(self):\n        '''Docstring.\n\n        More text.\n        '''\n        return None",
    "x = [1,2,3]  # comment with  two spaces",
    "import numpy as np\n\narr = np.zeros((3, 3), dtype=np.float32)\nprint(arr.T @ arr)",
    "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
    "$ npm run build && node dist/index.js --flag=value",
];

const SCRIPTS = [
    "héllo wörld, ça va? Ñandú über straße",
    "Ελληνικά: Γειά σου Κόσμε",
    "Русский текст: Привет, мир!",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "বাংলা: ওহে বিশ্ব",
    "ไทย: สวัสดีชาวโลก",
    "中文：你好，世界！",
    "日本語：こんにちは世界。カタカナ、ひらがな。",
    "한국어: 안녕하세요 세계",
    "ქართული: გამარჯობა მსოფლიო",
    "Հայերեն: Բարեւ աշխարհ",
    "አማርኛ: ሰላም ልዑል",
    "தமிழ்: வணக்கம் உலகம்",
    "ខ្មែរ: សួស្តី​ពិភពលោក",
    "ᠮᠣᠩᠭᠣᠯ: ᠰᠠᠢᠨ ᠪᠠᠢᠨ᠎ᠠ ᠤᠤ",
    "བོད་ཡིག: བཀྲ་ཤིས་བདེ་ལེགས།",
    "Tiếng Việt: Xin chào thế giới",
    "combining: e\u0301 a\u0300 o\u0308 n\u0303 (decomposed)",
    "math: ∀x∈ℝ, ∑ᵢ xᵢ² ≥ 0 ⇒ √x ≈ π ∞ ≠ ∅",
    "symbols: © ® ™ § ¶ † ‡ • … ‰ € £ ¥ ₹ ₿",
    "fullwidth: ＡＢＣ１２３！？",
    "old: 𐌰𐌱𐌲 𓀀𓀁 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚",
    "zero\u200bwidth\u200cjoiner\u200dand\ufeffBOM",
];

const EMOJI = [
    "🤖 robot", "👍🏽 thumbs up medium skin", "👩‍👩‍👧‍👦 family (ZWJ)", "🏳️‍🌈 rainbow flag", "🇯🇵🇺🇸🇩🇪 flags",
    "1️⃣ 2️⃣ #️⃣ keycaps", "❤️ ♥ ❤ hearts with VS16", "🧑🏿‍💻 technologist", "👨‍❤️‍💋‍👨 kiss", "😀😃😄😁😆😅🤣😂",
    "🐈‍⬛ black cat", "🫠🫡🫥 newer emoji", "emoji🤖inside🤖words", "✈️ ☀️ ☁️ ⛄",
];

const NUMBERS = [
    "0", "7", "42", "123456789", "3.14159265358979", "-273.15", "1,000,000", "1e-10", "6.022e23", "0x1F 0b1010 0o777",
    "2024-06-30T12:34:56Z", "+1 (555) 123-4567", "$1,234.56 and 99.9%", "v1.2.3-beta.4", "12345678901234567890",
];

const URLS = [
    "https://example.com/path/to/page?query=1&x=y#frag",
    "http://localhost:8080/api/v1/agents/42",
    "see https://github.com/microsoft/phi-2 and mailto:someone@example.org",
    "file:///home/user/models/phi-2.Q4_K_M.gguf",
    "ftp://user:pass@ftp.example.net:21/dir/file.tar.gz",
    "www.example.co.uk/some_path-with.dots",
];

const SPECIAL_TEXT = [
    "<|endoftext|>",
    "Hello<|endoftext|>World",
    "a <|endoftext|> b",
    "<|endoftext|><|endoftext|>",
    "<|endoftext",
    "<|endoftext|",
    "text with <|im_start|> and </s> and [INST]",
];

const PROSE = [
    "The benefits of multi-agent systems include",
    "Hello world", " Hello world", "Hello World", " Hello World!", "Hello, world!",
    "I'm sure it's fine, they're here, we've won, I'll go, he'd say.",
    "IT'S LOUD. He'S odd. 's 't 're 've 'm 'll 'd",
    "\"Quoted\" 'single' `back` «guillemets» “curly” ‘quotes’",
    "What?! No... Yes!!! (maybe) [ok] {fine} <tag>",
    "a", " ", "\n", "\t", "\r\n", ".", "!!!!!!", "----------", "==========", "__init__",
];


const PIECES = [
    "the", "The", " agent", "model", "Phi", "-2", "llama", ".cpp", "42", "3.5", "日本", "мир", "🤖", "👩‍💻", "é", "ß",
    " ", "  ", "   ", "\t", "\t\t", "\n", "\r\n", "\n\n", ",", ".", "'s", "'ll", "!", "?", "()", "{}", "=>", "//", "#", "_",
    "<|endoftext|>", "http://x.io", "ÿ", "\u00a0", "\u3000", "ａ", "🇫🇷",
];

function randomMixes(n: number, seed: number): string[] {
    const r = rng(seed);
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
        const len = 1 + Math.floor(r() * 30);
        let s = "";
        for (let j = 0; j < len; j++) {
            const x = r();
            if (x < 0.15) s += " ".repeat(1 + Math.floor(r() * 40));
            else if (x < 0.2) s += "\t".repeat(1 + Math.floor(r() * 12));
            else if (x < 0.25) s += String.fromCodePoint(0x20 + Math.floor(r() * 0x2fd0)); // BMP below the surrogates' neighbours
            else s += PIECES[Math.floor(r() * PIECES.length)]!;
        }
        out.push(s);
    }
    return out;
}

/** ~20 kB of everything above, repeated. */
function bigString(): string {
    const parts = [...CODE, ...SCRIPTS, ...EMOJI, ...NUMBERS, ...URLS, ...PROSE];
    let s = "";
    for (let i = 0; s.length < 20_000; i++) s += parts[i % parts.length] + (i % 7 === 0 ? "\r\n" : i % 5 === 0 ? "    " : " ");
    return s.slice(0, 20_000).toWellFormed(); // a cut may split a surrogate pair
}

/** The corpus (≥ 200 strings), deterministic. */
export function tokenizerCorpus(): string[] {
    const runs: string[] = [];
    for (let n = 2; n <= 40; n++) runs.push(`a${" ".repeat(n)}b`);
    for (const n of [2, 3, 5, 8, 17, 31, 32, 33, 40]) runs.push(" ".repeat(n), `${" ".repeat(n)}x`, `x${" ".repeat(n)}`, `\n${" ".repeat(n)}\n`);
    for (let n = 1; n <= 12; n++) runs.push(`x${"\t".repeat(n)}y`);
    runs.push("\t\t\t\t\t\t\t\t\t\t", " \t \t ", "\t  \t\t   \t");
    const crlf = [
        "line one\r\nline two\r\n", "\r\n\r\n\r\n", "windows\r\n  indented\r\n\tTabbed\r\n", "old mac\rline\r", "mixed\n\r\n\r end",
    ];
    const corpus = [
        "", ...PROSE, ...CODE, ...runs, ...crlf, ...SCRIPTS, ...EMOJI, ...NUMBERS, ...URLS, ...SPECIAL_TEXT,
        ...randomMixes(60, 20240601), bigString(),
    ];
    return corpus;
}

/** Text has a run of ≥ 2 spaces or ≥ 2 tabs: Phi-2's added whitespace tokens apply (GPT-2's tokenizer differs). */
export function hasWhitespaceRun(text: string): boolean {
    return /  |\t\t/.test(text);
}
