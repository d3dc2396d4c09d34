/**
 * API keys: `Authorization: Bearer KEY` or `X-Api-Key: KEY`, compared in constant time (both sides hashed to
 * SHA-256 first, so neither the key's length nor its bytes leak through timing).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { ApiError } from "./errors.js";

const digest = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** The key a request presents, if any. */
export function presentedKey(headers: IncomingHttpHeaders): string | undefined {
    const auth = headers.authorization;
    if (typeof auth === "string") {
        const m = /^Bearer[ \t]+(.+)$/i.exec(auth.trim());
        if (m) return m[1]!.trim();
    }
    const x = headers["x-api-key"];
    if (typeof x === "string" && x.length > 0) return x.trim();
    return undefined;
}

/** A checker for `key`: throws 401 for a request without it. */
export function keyChecker(key: string): (headers: IncomingHttpHeaders) => void {
    const want = digest(key);
    return (headers) => {
        const got = presentedKey(headers);
        if (got === undefined) {
            throw new ApiError(401, "missing_api_key", `This server needs an API key: send "Authorization: Bearer KEY" or "X-Api-Key: KEY"`, { type: "authentication_error" });
        }
        if (!timingSafeEqual(digest(got), want)) {
            throw new ApiError(401, "invalid_api_key", "The API key is not valid for this server", { type: "authentication_error" });
        }
    };
}
