/**
 * The plain C++ baseline (bench/cpp/phi_loop.cpp): finding the prebuilt llama.cpp libraries it links against,
 * building it with g++ into build/bench/ (skipped when up to date) and running it.
 */
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { LOAD_DEFAULTS } from "../../src/model/options.js";

/** The folder of node-llama-cpp's prebuilt CPU libraries for this platform (the ones our addon runs on too). */
export function findLlamaLibDir(root: string): string {
    const platform = `${process.platform}-${process.arch}`;
    for (let dir = root; ; dir = path.dirname(dir)) {
        const candidate = path.join(dir, "node_modules", "@node-llama-cpp", platform, "bins", platform);
        if (fs.existsSync(candidate)) return candidate;
        if (path.dirname(dir) === dir) break;
    }
    throw new Error(
        `bench: no prebuilt llama.cpp libraries for ${platform} (looked for node_modules/@node-llama-cpp/${platform}/bins/${platform}). ` +
            "Run `npm ci` (the @node-llama-cpp platform package is an optional dependency).",
    );
}

function libFile(libDir: string, prefix: string): string {
    const names = fs.readdirSync(libDir).filter((f) => f.startsWith(prefix) && f.endsWith(".so"));
    // libllama.v0.5.0.so, not libllama-common.so
    const pick = names.find((n) => n === prefix + ".so" || n.startsWith(prefix + ".v"));
    if (!pick) throw new Error(`bench: ${prefix}*.so not found in ${libDir}`);
    return path.join(libDir, pick);
}

/** Builds build/bench/phi_loop unless it is newer than its source and the libraries. Returns the binary path. */
export function buildCppLoop(root: string, libDir: string, log: (s: string) => void): string {
    const src = path.join(root, "bench", "cpp", "phi_loop.cpp");
    const outDir = path.join(root, "build", "bench");
    const bin = path.join(outDir, "phi_loop");
    const include = path.join(root, "deps", "llama.cpp", "include");
    const ggmlInclude = path.join(root, "deps", "llama.cpp", "ggml", "include");
    if (!fs.existsSync(path.join(include, "llama.h"))) {
        throw new Error("bench: deps/llama.cpp/include/llama.h is missing; run `npm run setup:llama` (or `npm run build`) first.");
    }
    if (process.platform !== "linux") {
        throw new Error(`bench: the C++ baseline build is written for Linux (g++, .so); this is ${process.platform}.`);
    }
    const libs = [libFile(libDir, "libllama"), libFile(libDir, "libggml"), path.join(libDir, "libggml-base.so")];
    const inputs = [src, ...libs, path.join(include, "llama.h")];
    if (fs.existsSync(bin)) {
        const binTime = fs.statSync(bin).mtimeMs;
        if (inputs.every((f) => fs.statSync(f).mtimeMs <= binTime)) return bin;
    }
    fs.mkdirSync(outDir, { recursive: true });
    const args = ["-O2", "-std=c++17", src, `-I${include}`, `-I${ggmlInclude}`, ...libs, `-Wl,-rpath,${libDir}`, "-ldl", "-o", bin];
    log(`building the C++ loop: g++ ${args.map((a) => path.relative(root, a) || a).join(" ")}`);
    try {
        execFileSync(process.env.CXX || "g++", args, { stdio: ["ignore", "inherit", "inherit"] });
    } catch (err) {
        throw new Error(`bench: building ${path.relative(root, src)} failed (${(err as Error).message}). Is g++ installed?`);
    }
    return bin;
}

/** The JSON line phi_loop prints. */
export interface CppLoopResult {
    tool: "phi_loop";
    threads: number;
    sequences: number;
    prompt_tokens: number;
    gen_tokens: number;
    n_ctx: number;
    batch: number;
    flash_attn: string;
    repack: boolean;
    threadpool: boolean;
    backend_ms: number;
    load_ms: number;
    load_warm_ms: number | null;
    prompt_ms: number[];
    prompt_tok_s: number[];
    ttft_ms: number[];
    decode_tok_s: number[];
    aggregate_tok_s: number[];
    e2e_aggregate_tok_s: number[];
    first_eog: number[];
    tokens: number[];
    peak_rss_kb: number;
    cpu_ms: number;
    cpu: string;
    system_info: string;
}

export interface CppLoopArgs {
    model: string;
    threads: number;
    promptIds: number[][];
    genTokens: number;
    sequences: number;
    repeat: number;
    batch?: number;
    ctx?: number;
    reload?: boolean;
    flashAttn?: "auto" | "on" | "off";
    threadpool?: boolean;
    /** false: --no-repack (llama_model_params.use_extra_bufts = false). */
    repack?: boolean;
    libDir?: string;
}

export function runCppLoop(bin: string, a: CppLoopArgs, tmpDir: string, timeoutMs: number): Promise<CppLoopResult> {
    const idsFile = path.join(tmpDir, `prompt-ids-${process.pid}-${Date.now()}.txt`);
    fs.writeFileSync(idsFile, a.promptIds.map((p) => p.join(" ")).join("\n") + "\n");
    const args = [
        "--model", a.model,
        "--threads", String(a.threads),
        "--prompt-ids-file", idsFile,
        "--prompt-tokens", String(a.promptIds[0]!.length),
        "--gen-tokens", String(a.genTokens),
        "--sequences", String(a.sequences),
        "--repeat", String(a.repeat),
        "--batch", String(a.batch ?? LOAD_DEFAULTS.batchSize),
        "--print-tokens",
    ];
    if (a.ctx) args.push("--ctx", String(a.ctx));
    if (a.reload) args.push("--reload");
    if (a.flashAttn) args.push("--flash-attn", a.flashAttn);
    if (a.threadpool) args.push("--threadpool");
    if (a.repack === false) args.push("--no-repack");
    if (a.libDir) args.push("--lib-dir", a.libDir);
    return new Promise((resolve, reject) => {
        const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
        child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
        child.on("error", reject);
        child.on("close", (code, signal) => {
            clearTimeout(timer);
            fs.rmSync(idsFile, { force: true });
            const line = out.split("\n").find((l) => l.startsWith("{"));
            if (code === 0 && line) resolve(JSON.parse(line) as CppLoopResult);
            else reject(new Error(`phi_loop ${signal ? "was killed by " + signal : "exited with code " + code}: ${err.trim().split("\n").slice(-8).join(" | ")}`));
        });
    });
}
