/**
 * The one client `npm run bench:server` drives every server with (ours and llama.cpp's llama-server): a streaming
 * POST /v1/completions over node:http with keep-alive, parsing the SSE `data:` lines, timing the first and last
 * content chunk on the client's clock.
 */
import http from "node:http";
import { performance } from "node:perf_hooks";

export interface StreamTiming {
    /** From sending the request to the first chunk with text. */
    ttftMs: number;
    /** From the first to the last chunk with text. */
    decodeMs: number;
    /** Generated tokens (usage.completion_tokens when the server reports it, else the text chunks). */
    tokens: number;
    /** Chunks that carried text. */
    chunks: number;
    text: string;
    finishReason: string | null;
    sentAt: number;
    firstAt: number;
    lastAt: number;
}

// A new connection per request, on every side: a kept-alive socket that the server has just closed would fail
// the next request (ECONNRESET), and connecting over loopback costs a fraction of a millisecond.
const agent = new http.Agent({ keepAlive: false, maxSockets: 256 });

/** One streamed completion; rejects on a non-200 status or an error event. */
export function streamCompletion(baseUrl: string, body: Record<string, unknown>): Promise<StreamTiming> {
    const url = new URL("/v1/completions", baseUrl);
    const payload = JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } });
    return new Promise((resolve, reject) => {
        const sentAt = performance.now();
        let firstAt = 0;
        let lastAt = 0;
        let chunks = 0;
        let text = "";
        let usageTokens: number | undefined;
        let finishReason: string | null = null;
        let buf = "";
        const req = http.request(url, {
            method: "POST", agent,
            headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
        }, (res) => {
            if (res.statusCode !== 200) {
                let err = "";
                res.setEncoding("utf8").on("data", (d: string) => (err += d)).on("end", () => reject(new Error(`HTTP ${res.statusCode}: ${err.slice(0, 300)}`)));
                return;
            }
            res.setEncoding("utf8");
            res.on("data", (d: string) => {
                const now = performance.now();
                buf += d;
                let nl: number;
                while ((nl = buf.indexOf("\n")) >= 0) {
                    const line = buf.slice(0, nl).trim();
                    buf = buf.slice(nl + 1);
                    if (!line.startsWith("data:")) continue;
                    const data = line.slice(5).trim();
                    if (data === "[DONE]") continue;
                    const obj = JSON.parse(data) as {
                        error?: { message?: string };
                        choices?: { text?: string; finish_reason?: string | null }[];
                        usage?: { completion_tokens?: number } | null;
                    };
                    if (obj.error) {
                        reject(new Error(`stream error: ${obj.error.message}`));
                        req.destroy();
                        return;
                    }
                    const c = obj.choices?.[0];
                    if (c?.text) {
                        if (!firstAt) firstAt = now;
                        lastAt = now;
                        chunks++;
                        text += c.text;
                    }
                    if (c?.finish_reason) finishReason = c.finish_reason;
                    if (obj.usage?.completion_tokens !== undefined) usageTokens = obj.usage.completion_tokens;
                }
            });
            res.on("end", () => resolve({
                ttftMs: firstAt - sentAt, decodeMs: lastAt - firstAt, tokens: usageTokens ?? chunks, chunks, text, finishReason, sentAt, firstAt, lastAt,
            }));
            res.on("error", reject);
        });
        req.on("error", reject);
        req.end(payload);
    });
}

/** GET a URL (status code only); resolves 0 when nothing answers. */
export function getStatus(url: string): Promise<number> {
    return new Promise((resolve) => {
        const req = http.get(url, { agent }, (res) => {
            res.resume();
            res.on("end", () => resolve(res.statusCode ?? 0));
        });
        req.on("error", () => resolve(0));
    });
}

export function closeClient(): void {
    agent.destroy();
}
