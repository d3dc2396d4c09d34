/**
 * phi-agent serve at the HTTP level, on a real listening server (127.0.0.1, port 0) over the tiny test model:
 * raw sockets (malformed HTTP, oversized bodies, slow headers and bodies, a client that vanishes mid-stream),
 * auth, CORS, limits, error shapes, /health while loading, /metrics, /tokenize, the GGUF's chat template, the
 * package root not loading fastify, and the real CLI process under SIGTERM.
 */
import { expect } from "chai";
import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { kv } from "../src/gguf/writer.js";
import { PhiModel } from "../src/model/PhiModel.js";
import { packageRoot } from "../src/native/binding.js";
import { exposureWarning } from "../src/server/index.js";
import { tinyModel } from "./helpers/models.js";
import { nextGeneration, startServer, withMetadata, type TestServer } from "./helpers/server.js";

const MODEL = "test-tiny-f32-s1";
const CLI = path.join(packageRoot, "dist", "src", "cli", "main.js");

/** Writes `bytes` on a fresh connection and collects everything until the server closes it. */
function raw(port: number, bytes: string | Buffer, { end = false } = {}): Promise<{ text: string; status: number }> {
    return new Promise((resolve, reject) => {
        const socket = net.connect(port, "127.0.0.1");
        const chunks: Buffer[] = [];
        socket.on("data", (d) => chunks.push(d));
        socket.on("error", (err) => {
            if ((err as NodeJS.ErrnoException).code === "ECONNRESET" || (err as NodeJS.ErrnoException).code === "EPIPE") return; // the server may cut a body short
            reject(err);
        });
        socket.on("close", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            resolve({ text, status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0) });
        });
        socket.write(bytes);
        if (end) socket.end();
    });
}

/** The JSON body of a raw response. */
function bodyOf(text: string): unknown {
    const at = text.indexOf("\r\n\r\n");
    const body = text.slice(at + 4);
    if (/transfer-encoding: chunked/i.test(text.slice(0, at))) {
        let out = "";
        let rest = body;
        for (;;) {
            const nl = rest.indexOf("\r\n");
            const n = parseInt(rest.slice(0, nl), 16);
            if (!n) break;
            out += rest.slice(nl + 2, nl + 2 + n);
            rest = rest.slice(nl + 2 + n + 2);
        }
        return JSON.parse(out);
    }
    return JSON.parse(body);
}

const post = (url: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: typeof body === "string" ? body : JSON.stringify(body) });

describe("server: HTTP, limits and safety", function () {
    this.timeout(120_000);
    let t: TestServer;
    let port: number;

    before(async function () {
        t = await startServer({ headersTimeoutMs: 300, requestTimeoutMs: 600, bodyLimit: 64 * 1024 });
        port = t.server.port;
    });
    after(async function () {
        await t?.server.close();
    });

    it("malformed HTTP is a 400 in OpenAI's error shape and the connection closes; the server goes on", async function () {
        for (const bytes of ["GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "POST /v1/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", "\x00\x01\x02\r\n\r\n"]) {
            const r = await raw(port, bytes);
            expect(r.status, JSON.stringify(bytes)).to.equal(400);
            expect((bodyOf(r.text) as { error: { code: string } }).error.code).to.equal("malformed_request");
        }
        const headers = await raw(port, `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`);
        expect(headers.status).to.equal(431);
        expect((await fetch(`${t.url}/health`)).status).to.equal(200);
    });

    it("a body over the limit is a 413 (Content-Length or chunked), and the server goes on", async function () {
        const big = JSON.stringify({ model: MODEL, prompt: "x".repeat(100 * 1024) });
        const declared = await raw(port, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${big.length}\r\nConnection: close\r\n\r\n${big}`);
        expect(declared.status).to.equal(413);
        expect((bodyOf(declared.text) as { error: { code: string } }).error.code).to.equal("body_too_large");
        const chunk = big.slice(0, 40_000);
        const chunked = await raw(port, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
            `${chunk.length.toString(16)}\r\n${chunk}\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`);
        expect(chunked.status).to.equal(413);
        const viaFetch = await post(`${t.url}/v1/completions`, big);
        expect(viaFetch.status).to.equal(413);
        expect(((await viaFetch.json()) as { error: { type: string } }).error.type).to.equal("invalid_request_error");
        expect((await fetch(`${t.url}/health`)).status).to.equal(200);
    });

    it("slow headers and slow bodies time out with 408 and the connection closes; others are served meanwhile", async function () {
        const slowHeaders = raw(port, "GET /health HTTP/1.1\r\nHost: x\r\n"); // never ends its headers
        const slowBody = raw(port, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":`);
        expect((await fetch(`${t.url}/health`)).status).to.equal(200);
        const [h, b] = await Promise.all([slowHeaders, slowBody]);
        expect(h.status).to.equal(408);
        expect((bodyOf(h.text) as { error: { code: string } }).error.code).to.equal("request_timeout");
        expect(b.status).to.equal(408);
        expect((await fetch(`${t.url}/health`)).status).to.equal(200);
    });

    it("the request timeout bounds receiving the request, not the response: a stream outlives it", async function () {
        // this server's request timeout is 600 ms; the stream below is read slowly, one chunk per macrotask turn
        const res = await post(`${t.url}/v1/completions`, { model: MODEL, prompt: "Once", max_tokens: 500, stream: true, stream_options: { include_usage: true } });
        expect(res.status).to.equal(200);
        const reader = res.body!.getReader();
        let text = "";
        const started = Date.now();
        for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            text += Buffer.from(value).toString();
            await new Promise((r) => setImmediate(r));
        }
        const took = Date.now() - started;
        expect(text.trimEnd().endsWith("data: [DONE]")).to.equal(true);
        const usage = text.split("\n").filter((l) => l.startsWith("data: {")).map((l) => JSON.parse(l.slice(6)) as { usage?: { completion_tokens: number } | null }).pop()!.usage;
        expect(usage!.completion_tokens).to.be.greaterThan(0);
        void took; // how long it ran (longer than the request timeout on this machine: ~1-2 s for 500 tokens)
    });

    it("a client that vanishes mid-stream aborts its generation and frees the slot", async function () {
        const aborted = nextGeneration(t.server, (e) => e.finishReason === "abort");
        const body = JSON.stringify({ model: MODEL, prompt: "Once", max_tokens: 400, stream: true });
        const socket = net.connect(port, "127.0.0.1");
        socket.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
        let seen = "";
        await new Promise<void>((resolve) => socket.on("data", (d) => {
            seen += d.toString();
            if ((seen.match(/data: /g) ?? []).length >= 2) resolve();
        }));
        expect(seen).to.match(/^HTTP\/1\.1 200/).and.match(/text\/event-stream/);
        socket.destroy();
        const e = await aborted;
        expect(e.completionTokens).to.be.lessThan(400);
        expect(t.server.model!.stats().active).to.equal(0);
        const r = await post(`${t.url}/v1/completions`, { model: MODEL, prompt: "Hi", max_tokens: 2 });
        expect(r.status).to.equal(200);
    });

    it("bad JSON, wrong content type, a non-object body and unknown routes: 400, 415, 400, 404 in the API's shape", async function () {
        const bad = await post(`${t.url}/v1/chat/completions`, "{not json");
        expect(bad.status).to.equal(400);
        expect(((await bad.json()) as { error: { code: string } }).error.code).to.equal("invalid_json");
        const type = await fetch(`${t.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "a=b" });
        expect(type.status).to.equal(415);
        expect(((await type.json()) as { error: { message: string } }).error.message).to.match(/application\/json/);
        const arr = await post(`${t.url}/v1/completions`, [1, 2]);
        expect(arr.status).to.equal(400);
        const proto = await post(`${t.url}/v1/completions`, `{"model":"${MODEL}","prompt":"x","__proto__":{"polluted":true}}`);
        expect(proto.status).to.equal(400);
        const nf = await fetch(`${t.url}/v2/nothing`);
        expect(nf.status).to.equal(404);
        expect(await nf.json()).to.deep.include({ error: { message: "No route GET /v2/nothing; see README \"Serve over HTTP\" for the endpoints", type: "not_found_error", param: null, code: "route_not_found" } });
        const ollamaNf = await fetch(`${t.url}/api/nothing`);
        expect(ollamaNf.status).to.equal(404);
        expect(typeof ((await ollamaNf.json()) as { error: unknown }).error, "Ollama's shape on /api/*").to.equal("string");
        const field = await post(`${t.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: "user", content: "x" }], stop: ["a", 5] });
        expect(field.status).to.equal(400);
        expect(((await field.json()) as { error: { param: string } }).error.param).to.equal("stop[1]");
    });

    it("/tokenize and /detokenize match the model's tokenizer", async function () {
        const text = "Hello, world! <|endoftext|>";
        const tok = (await (await post(`${t.url}/tokenize`, { content: text })).json()) as { tokens: number[] };
        expect(tok.tokens).to.deep.equal(t.server.model!.tokenize(text));
        const special = (await (await post(`${t.url}/tokenize`, { content: text, parse_special: true, with_pieces: true })).json()) as { tokens: { id: number; piece: string }[] };
        expect(special.tokens.map((x) => x.id)).to.deep.equal(t.server.model!.tokenize(text, { special: true }));
        expect(special.tokens.map((x) => x.piece).join("")).to.equal(text);
        const de = (await (await post(`${t.url}/detokenize`, { tokens: tok.tokens })).json()) as { content: string };
        expect(de.content).to.equal(text);
        const out = await post(`${t.url}/detokenize`, { tokens: [10 ** 7] });
        expect(out.status).to.equal(400);
    });

    it("/metrics: requests, tokens, errors and the queue in Prometheus text", async function () {
        await post(`${t.url}/v1/completions`, { model: MODEL, prompt: "Hello", max_tokens: 3 });
        await post(`${t.url}/v1/completions`, { model: "nope", prompt: "Hello" });
        const r = await fetch(`${t.url}/metrics`);
        expect(r.status).to.equal(200);
        expect(r.headers.get("content-type")).to.match(/^text\/plain/);
        const text = await r.text();
        expect(text).to.match(/phi_agent_requests_total\{route="\/v1\/completions",status="200"\} [1-9]/);
        expect(text).to.match(/phi_agent_requests_total\{route="\/v1\/completions",status="404"\} [1-9]/);
        expect(text).to.match(/phi_agent_errors_total\{type="not_found_error",code="model_not_found"\} [1-9]/);
        expect(text).to.match(/phi_agent_prompt_tokens_total [1-9]/);
        expect(text).to.match(/phi_agent_completion_tokens_total [1-9]/);
        expect(text).to.match(/phi_agent_queue_active 0/);
        expect(text).to.match(/phi_agent_queue_waiting 0/);
        expect(text).to.match(/phi_agent_decode_tokens_per_second [0-9.e+]+/);
        expect(text).to.include("phi_agent_time_to_first_token_seconds_bucket");
    });
});

describe("server: auth, CORS, queue and loading", function () {
    this.timeout(120_000);

    it("with a key: 401 (OpenAI's shape, WWW-Authenticate) without it or with a wrong one; Bearer and X-Api-Key work; /health stays open", async function () {
        const t = await startServer({ apiKey: "correct horse" });
        try {
            const none = await fetch(`${t.url}/v1/models`);
            expect(none.status).to.equal(401);
            expect(none.headers.get("www-authenticate")).to.equal("Bearer");
            expect(((await none.json()) as { error: { code: string; type: string } }).error).to.include({ code: "missing_api_key", type: "authentication_error" });
            for (const key of ["wrong", "correct hors", "correct horse!", ""]) {
                const r = await fetch(`${t.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
                expect(r.status, JSON.stringify(key)).to.equal(401);
            }
            expect((await fetch(`${t.url}/v1/models`, { headers: { authorization: "Bearer correct horse" } })).status).to.equal(200);
            expect((await fetch(`${t.url}/v1/models`, { headers: { "x-api-key": "correct horse" } })).status).to.equal(200);
            expect((await fetch(`${t.url}/metrics`)).status, "/metrics needs the key too").to.equal(401);
            expect((await fetch(`${t.url}/health`)).status).to.equal(200);
            const ollama = await fetch(`${t.url}/api/tags`);
            expect(ollama.status).to.equal(401);
            expect(typeof ((await ollama.json()) as { error: unknown }).error).to.equal("string");
        } finally {
            await t.server.close();
        }
    });

    it("CORS is off by default, and on for the --cors origins only (preflight without a key)", async function () {
        const off = await startServer();
        try {
            const r = await fetch(`${off.url}/v1/models`, { headers: { origin: "https://evil.example" } });
            expect(r.headers.get("access-control-allow-origin")).to.equal(null);
            const pre = await fetch(`${off.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin: "https://evil.example", "access-control-request-method": "POST" } });
            expect(pre.headers.get("access-control-allow-origin")).to.equal(null);
        } finally {
            await off.server.close();
        }
        const on = await startServer({ cors: ["https://app.example"], apiKey: "k" });
        try {
            const pre = await fetch(`${on.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin: "https://app.example", "access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type" } });
            expect(pre.status).to.equal(204);
            expect(pre.headers.get("access-control-allow-origin")).to.equal("https://app.example");
            const other = await fetch(`${on.url}/v1/models`, { headers: { origin: "https://evil.example", "x-api-key": "k" } });
            expect(other.headers.get("access-control-allow-origin")).to.equal(null);
            const stream = await post(`${on.url}/v1/completions`, { model: MODEL, prompt: "Hi", max_tokens: 2, stream: true }, { origin: "https://app.example", "x-api-key": "k" });
            expect(stream.headers.get("access-control-allow-origin"), "streams carry the CORS headers too").to.equal("https://app.example");
            await stream.text();
        } finally {
            await on.server.close();
        }
    });

    it("a full queue is a 429 with Retry-After; the requests waiting in it all complete", async function () {
        const t = await startServer({ load: { sequences: 1, contextSize: 2048 }, maxQueue: 2 });
        try {
            const admitted = (n: number) => new Promise<void>((resolve) => {
                const on = (e: { inFlight: number }) => { if (e.inFlight >= n) { t.server.events.off("admitted", on); resolve(); } };
                t.server.events.on("admitted", on);
            });
            const holding = admitted(1);
            const holder = await post(`${t.url}/v1/completions`, { model: MODEL, prompt: "Once", max_tokens: 2000, stream: true });
            await holding;
            const reader = holder.body!.getReader();
            await reader.read(); // it decodes in the only slot
            const queued = admitted(3);
            const waiting = [1, 2].map(() => post(`${t.url}/v1/completions`, { model: MODEL, prompt: "Hi", max_tokens: 4 }));
            await queued;
            const r = await post(`${t.url}/v1/completions`, { model: MODEL, prompt: "x", max_tokens: 2 });
            expect(r.status).to.equal(429);
            expect(r.headers.get("retry-after")).to.equal("1");
            expect(((await r.json()) as { error: { code: string; type: string } }).error).to.include({ code: "queue_full", type: "rate_limit_error" });
            await reader.cancel(); // frees the slot: the two waiting get it in turn
            expect(await Promise.all(waiting.map((p) => p.then((x) => x.status)))).to.deep.equal([200, 200]);
        } finally {
            await t.server.close();
        }
    });

    it("/health is 503 while the model loads and 200 once it is ready; requests get 503 model_loading meanwhile", async function () {
        let release!: () => void;
        const gate = new Promise<void>((resolve) => (release = resolve));
        const t = await startServer({ loader: async (o) => { await gate; return PhiModel.load(o); } }, { waitReady: false });
        try {
            const loading = await fetch(`${t.url}/health`);
            expect(loading.status).to.equal(503);
            expect(((await loading.json()) as { error: { code: string } }).error.code).to.equal("model_loading");
            const gen = await post(`${t.url}/v1/completions`, { model: MODEL, prompt: "x" });
            expect(gen.status).to.equal(503);
            expect(gen.headers.get("retry-after")).to.equal("1");
            expect((await fetch(`${t.url}/v1/models`)).status, "what needs no model answers").to.equal(200);
            release();
            await t.server.ready;
            const ready = await fetch(`${t.url}/health`);
            expect(ready.status).to.equal(200);
            expect(await ready.json()).to.deep.equal({ status: "ok" });
        } finally {
            release();
            await t.server.close();
        }
    });

    it("a failed load keeps answering 503 with the reason", async function () {
        const t = await startServer({ loader: async () => { throw new Error("no memory for this test"); } }, { waitReady: false });
        try {
            const err = await t.server.ready.catch((e: unknown) => e);
            expect((err as Error).message).to.equal("no memory for this test");
            const r = await fetch(`${t.url}/health`);
            expect(r.status).to.equal(503);
            expect(((await r.json()) as { error: { message: string; code: string } }).error).to.include({ code: "model_unavailable" });
        } finally {
            await t.server.close();
        }
    });

    it("close() lets an in-flight stream finish, refuses new requests, and frees the model", async function () {
        const t = await startServer();
        const res = await post(`${t.url}/v1/completions`, { model: MODEL, prompt: "Once", max_tokens: 40, stream: true });
        const reader = res.body!.getReader();
        await reader.read();
        const model = t.server.model!;
        const closing = t.server.close();
        let text = "";
        for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            text += Buffer.from(value).toString();
        }
        expect(text.trimEnd().endsWith("data: [DONE]")).to.equal(true);
        await closing;
        expect(model.disposed).to.equal(true);
        const after = await fetch(`${t.url}/health`).catch((e: unknown) => e);
        expect(after).to.be.instanceOf(Error); // nothing listens any more
    });

    it("warns about a non-loopback address without a key", function () {
        expect(exposureWarning("127.0.0.1", undefined)).to.equal(undefined);
        expect(exposureWarning("::1", undefined)).to.equal(undefined);
        expect(exposureWarning("localhost", undefined)).to.equal(undefined);
        expect(exposureWarning("0.0.0.0", "key")).to.equal(undefined);
        expect(exposureWarning("0.0.0.0", undefined)).to.match(/without an API key/);
        expect(exposureWarning("192.168.1.5", undefined)).to.match(/--api-key/);
    });
});

describe("server: the GGUF's chat template", function () {
    this.timeout(120_000);
    let dir: string;
    before(function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "phi-template-"));
    });
    after(function () {
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it("renders tokenizer.chat_template with Jinja when the GGUF has one; its errors are 400s", async function () {
        const template = "{% for m in messages %}{% if m.role == 'user' and loop.index0 % 2 == 1 %}{{ raise_exception('roles must alternate user/assistant') }}{% endif %}" +
            "<{{ m.role }}>{{ m.content }}</{{ m.role }}>\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        const file = await withMetadata(await tinyModel("q8_0"), path.join(dir, "templated.gguf"), [kv.str("tokenizer.chat_template", template)]);
        const t = await startServer({ modelPath: file });
        try {
            const r = await post(`${t.url}/v1/chat/completions`, { model: "templated", messages: [{ role: "user", content: "Hi" }], max_tokens: 2 });
            expect(r.status).to.equal(200);
            const usage = ((await r.json()) as { usage: { prompt_tokens: number } }).usage;
            expect(usage.prompt_tokens).to.equal(t.server.model!.tokenize("<user>Hi</user>\n<assistant>").length);
            const bad = await post(`${t.url}/v1/chat/completions`, { model: "templated", messages: [{ role: "assistant", content: "a" }, { role: "user", content: "b" }] });
            expect(bad.status).to.equal(400);
            expect(((await bad.json()) as { error: { message: string } }).error.message).to.match(/roles must alternate/);
            const show = (await (await post(`${t.url}/api/show`, { model: "templated" })).json()) as { template: string };
            expect(show.template).to.equal(template);
        } finally {
            await t.server.close();
        }
    });
});

describe("server: packaging and the CLI", function () {
    this.timeout(180_000);

    it("importing the package root loads no server module (fastify, prom-client, jinja)", function () {
        // the static import graph of dist/src/index.js: every relative import followed, every bare one collected
        const seen = new Set<string>();
        const bare = new Set<string>();
        const walk = (file: string) => {
            if (seen.has(file)) return;
            seen.add(file);
            const code = fs.readFileSync(file, "utf8");
            for (const m of code.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+"([^"]+)"|(?:^|\n)\s*import\s+"([^"]+)"/g)) {
                const spec = m[1] ?? m[2]!;
                if (spec.startsWith(".")) walk(path.resolve(path.dirname(file), spec));
                else bare.add(spec);
            }
        };
        walk(path.join(packageRoot, "dist", "src", "index.js"));
        expect(seen.size).to.be.greaterThan(10);
        const server = [...bare].filter((s) => /^(fastify|@fastify\/|prom-client|@huggingface\/jinja)/.test(s));
        expect(server, "bare imports reachable from the package root").to.deep.equal([]);
        expect([...seen].map((f) => path.relative(packageRoot, f)).filter((f) => f.startsWith(path.join("dist", "src", "server")))).to.deep.equal([]);
        // the server entry point does import them
        const serverIndex = fs.readFileSync(path.join(packageRoot, "dist", "src", "server", "PhiServer.js"), "utf8");
        expect(serverIndex).to.include('from "fastify"');
        const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { exports: Record<string, unknown> };
        expect(pkg.exports["./server"]).to.deep.equal({ types: "./dist/src/server/index.d.ts", default: "./dist/src/server/index.js" });
    });

    it("`phi-agent --help` lists serve; bad serve flags are usage errors (exit 2)", async function () {
        const run = (args: string[]) => new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
            const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, PHI2_MODEL: "" } });
            let stdout = "";
            let stderr = "";
            child.stdout.on("data", (d) => (stdout += d));
            child.stderr.on("data", (d) => (stderr += d));
            child.on("close", (code) => resolve({ code, stdout, stderr }));
        });
        const help = await run(["--help"]);
        expect(help.stdout).to.include("  serve ").and.include("--api-key KEY");
        const serveHelp = await run(["serve", "--help"]);
        expect(serveHelp.code).to.equal(0);
        expect(serveHelp.stdout).to.match(/^Usage: phi-agent serve --model FILE \[--host 127\.0\.0\.1\] \[--port 8080\] \[--api-key KEY\]/);
        const model = await tinyModel("f32");
        for (const args of [["--port", "99999"], ["--port", "x"], ["--parallel", "0"], ["--bogus"], ["--api-key", " "]]) {
            const r = await run(["serve", "--model", model, ...args]);
            expect(r.code, `${args.join(" ")}: ${r.stderr}`).to.equal(2);
            expect(r.stderr).to.match(/^phi-agent serve: usage: /);
        }
        const missing = await run(["serve", "--model", path.join(os.tmpdir(), "no-such-model.gguf"), "--port", "0"]);
        expect(missing.code).to.equal(1);
        expect(missing.stderr).to.match(/ERR_MODEL_NOT_FOUND/);
    });

    it("the real CLI: SIGTERM lets the in-flight stream finish, takes no new request, and exits 0", async function () {
        const model = await tinyModel("f32");
        const child = spawn(process.execPath, [CLI, "serve", "--model", model, "--port", "0", "--threads", "1", "--context-size", "512"], { stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "";
        let stderr = "";
        child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
        child.stderr.setEncoding("utf8");
        const ready = new Promise<void>((resolve) => child.stderr.on("data", (d: string) => {
            stderr += d;
            if (stderr.includes("ready:")) resolve();
        }));
        const exited = once(child, "exit") as Promise<[number | null, string | null]>;
        try {
            await ready;
            const url = /listening on (http:\/\/\S+)/.exec(stdout)![1]!;
            const res = await post(`${url}/v1/completions`, { model: MODEL, prompt: "Once", max_tokens: 60, stream: true });
            const reader = res.body!.getReader();
            const first = await reader.read();
            expect(Buffer.from(first.value!).toString()).to.match(/^data: /);
            const stopping = new Promise<void>((resolve) => child.stderr.on("data", () => { if (stderr.includes("SIGTERM")) resolve(); }));
            child.kill("SIGTERM");
            await stopping;
            const refused = await fetch(`${url}/health`).then((r) => r.status, (e: Error) => e.message);
            expect(refused === 503 || typeof refused === "string", `a request after SIGTERM: ${refused}`).to.equal(true);
            let text = Buffer.from(first.value!).toString();
            for (;;) {
                const { value, done } = await reader.read();
                if (done) break;
                text += Buffer.from(value).toString();
            }
            expect(text.trimEnd().endsWith("data: [DONE]"), text.slice(-200)).to.equal(true);
            const [code, signal] = await exited;
            expect({ code, signal }, stderr).to.deep.equal({ code: 0, signal: null });
        } finally {
            if (child.exitCode === null) child.kill("SIGKILL");
        }
    });
});
