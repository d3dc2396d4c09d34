/**
 * A real redis-server for tests: started on a free loopback port in a temp dir, waited for by its "Ready to
 * accept connections" line (no sleeps), stopped (and its dir removed) by stop(). Options: a password for the
 * default user, extra ACL users, TLS (a throwaway self-signed cert made with openssl), AOF persistence so a
 * restart() keeps the data. monitor() records every command the server runs (MONITOR), for comparing command
 * sequences, with waitFor(predicate) to await one.
 *
 *   const server = await startRedisServer();
 *   after(() => server.stop());
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";

export interface RedisUser {
    name: string;
    password: string;
}

export interface StartRedisOptions {
    /** Password of the default user (`requirepass`). */
    password?: string;
    /** Further ACL users (all commands, all keys, all channels). */
    users?: RedisUser[];
    /** Also (or only: plain stays on unless `plain: false`) listen with TLS, on `tlsPort`. */
    tls?: boolean;
    /** Listen on a plain TCP port too (default true). */
    plain?: boolean;
    /** Keep data across restart() (AOF, fsync always). Default true. */
    persist?: boolean;
    /** More redis-server arguments. */
    args?: string[];
}

export interface RedisServer {
    readonly host: string;
    /** The plain port (0 when `plain: false`). */
    readonly port: number;
    /** The TLS port (0 without `tls`). */
    readonly tlsPort: number;
    /** The self-signed certificate (PEM file) clients must trust for TLS. */
    readonly caFile?: string;
    readonly dir: string;
    /** `redis://[user:pass@]127.0.0.1:port`, with the default user's password when set. */
    readonly url: string;
    /** `rediss://127.0.0.1:tlsPort` (with the password when set), when `tls`. */
    readonly tlsUrl?: string;
    /** Whether the server process is running. */
    readonly running: boolean;
    /** A new client (admin: default user), connected. Closed by stop(). */
    client(): Promise<Redis>;
    /** Starts recording every command (MONITOR). */
    monitor(): Promise<CommandLog>;
    /**
     * Stops the server (SIGTERM: it writes its AOF, then exits; waits for the exit). Idempotent. Without `keepDir`
     * it also closes the clients and monitors made here and removes the dir; with it, only the process stops (the
     * clients see an outage) and start() brings it back with its data.
     */
    stop(options?: { keepDir?: boolean }): Promise<void>;
    /** Kills it with SIGKILL (no final save). */
    kill(): Promise<void>;
    /** Starts it again on the same ports and dir (after stop({ keepDir: true }) or kill()). */
    start(): Promise<void>;
    /** stop({ keepDir: true }) then start(). */
    restart(): Promise<void>;
}

export interface MonitoredCommand {
    /** Seconds since the epoch, as MONITOR prints it. */
    time: string;
    /** "127.0.0.1:port" of the client that sent it. */
    source: string;
    /** The command name (upper case) and its arguments, exactly as sent. */
    args: string[];
}

export interface CommandLog {
    readonly commands: MonitoredCommand[];
    /** Resolves with the first command (already seen or to come) that matches. */
    waitFor(predicate: (c: MonitoredCommand) => boolean, what?: string): Promise<MonitoredCommand>;
    /** The commands matching `predicate` so far. */
    filter(predicate: (c: MonitoredCommand) => boolean): MonitoredCommand[];
    stop(): Promise<void>;
}

/** Whether redis-server (and, for TLS, openssl) can be run here. */
export function redisServerPath(): string | undefined {
    const r = spawnSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" });
    const path = r.stdout.trim();
    return r.status === 0 && path ? path : undefined;
}

/** A loopback port nobody listens on right now. */
export async function freePort(): Promise<number> {
    const server = createServer();
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const address = server.address();
    const port = typeof address === "object" && address ? address.port : 0;
    server.close();
    await once(server, "close");
    return port;
}

function makeCert(dir: string): { cert: string; key: string } {
    const cert = join(dir, "cert.pem");
    const key = join(dir, "key.pem");
    const r = spawnSync("openssl", [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`openssl could not make a test certificate: ${r.stderr || r.error?.message}`);
    return { cert, key };
}

/** Starts a redis-server; rejects when it cannot (with its log). */
export async function startRedisServer(options: StartRedisOptions = {}): Promise<RedisServer> {
    const bin = redisServerPath();
    if (!bin) throw new Error("redis-server is not installed (apt-get install -y redis-server)");
    const dir = mkdtempSync(join(tmpdir(), "phi-redis-"));
    const plain = options.plain ?? true;
    const persist = options.persist ?? true;
    const certs = options.tls ? makeCert(dir) : undefined;
    const host = "127.0.0.1";
    let port = 0;
    let tlsPort = 0;
    let child: ChildProcess | undefined;
    const clients = new Set<Redis>();
    const logs = new Set<CommandLog>();

    const args = (): string[] => {
        const a = ["--bind", host, "--port", String(port), "--dir", dir, "--save", "", "--daemonize", "no",
            "--logfile", "", "--protected-mode", "no", "--appendonly", persist ? "yes" : "no"];
        if (persist) a.push("--appendfsync", "always");
        if (options.password !== undefined) a.push("--requirepass", options.password);
        for (const u of options.users ?? []) a.push("--user", u.name, "on", `>${u.password}`, "~*", "&*", "+@all");
        if (certs) {
            a.push("--tls-port", String(tlsPort), "--tls-cert-file", certs.cert, "--tls-key-file", certs.key,
                "--tls-ca-cert-file", certs.cert, "--tls-auth-clients", "no");
        }
        a.push(...(options.args ?? []));
        return a;
    };

    const launch = async (): Promise<void> => {
        const proc = spawn(bin, args(), { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
        child = proc;
        let log = "";
        await new Promise<void>((resolve, reject) => {
            const onData = (chunk: Buffer) => {
                log += chunk.toString();
                if (/Ready to accept connections/.test(log)) {
                    proc.stdout!.off("data", onData);
                    proc.off("exit", onExit);
                    // keep draining so a full pipe never blocks the server
                    proc.stdout!.resume();
                    resolve();
                }
            };
            const onExit = (code: number | null) => reject(new Error(`redis-server exited (${code}) before it was ready:\n${log}`));
            proc.stdout!.on("data", onData);
            proc.stderr!.on("data", (c: Buffer) => { log += c.toString(); });
            proc.once("exit", onExit);
            proc.once("error", reject);
        });
    };

    for (let attempt = 0; ; attempt++) {
        port = plain ? await freePort() : 0;
        tlsPort = certs ? await freePort() : 0;
        try {
            await launch();
            break;
        } catch (err) {
            // another process took the port between freePort() and the bind: try others
            if (attempt < 4 && /already in use/i.test(String((err as Error).message))) continue;
            rmSync(dir, { recursive: true, force: true });
            throw err;
        }
    }

    const auth = options.password !== undefined ? `:${encodeURIComponent(options.password)}@` : "";
    const server: RedisServer = {
        host,
        get port() { return port; },
        get tlsPort() { return tlsPort; },
        ...(certs ? { caFile: certs.cert } : {}),
        dir,
        url: plain ? `redis://${auth}${host}:${port}` : "",
        ...(certs ? { tlsUrl: `rediss://${auth}${host}:${tlsPort}` } : {}),
        get running() { return child !== undefined && child.exitCode === null && child.signalCode === null; },
        async client() {
            const c = plain
                ? new Redis({ host, port, ...(options.password !== undefined ? { password: options.password } : {}), maxRetriesPerRequest: 1, lazyConnect: true })
                : new Redis({ host, port: tlsPort, tls: { ca: [readCa(certs!.cert)] }, ...(options.password !== undefined ? { password: options.password } : {}), lazyConnect: true, maxRetriesPerRequest: 1 });
            c.on("error", () => undefined);
            await c.connect();
            clients.add(c);
            return c;
        },
        async monitor() {
            const admin = await server.client();
            const mon = await admin.monitor();
            mon.on("error", () => undefined);
            clients.add(mon as unknown as Redis);
            const commands: MonitoredCommand[] = [];
            const waiters: { predicate: (c: MonitoredCommand) => boolean; resolve: (c: MonitoredCommand) => void }[] = [];
            mon.on("monitor", (time: string, cmdArgs: string[], source: string) => {
                const c: MonitoredCommand = { time, source, args: [String(cmdArgs[0]).toUpperCase(), ...cmdArgs.slice(1).map(String)] };
                commands.push(c);
                for (const w of [...waiters]) {
                    if (w.predicate(c)) {
                        waiters.splice(waiters.indexOf(w), 1);
                        w.resolve(c);
                    }
                }
            });
            const log: CommandLog = {
                commands,
                waitFor(predicate) {
                    const seen = commands.find(predicate);
                    if (seen) return Promise.resolve(seen);
                    return new Promise((resolve) => waiters.push({ predicate, resolve }));
                },
                filter: (predicate) => commands.filter(predicate),
                async stop() {
                    logs.delete(log);
                    clients.delete(mon as unknown as Redis);
                    mon.disconnect();
                },
            };
            logs.add(log);
            // the MONITOR reply comes before any command is fed; a PING through another client marks the start
            await admin.ping("monitor-start");
            await log.waitFor((c) => c.args[0] === "PING" && c.args[1] === "monitor-start");
            commands.length = 0;
            return log;
        },
        async stop(opts = {}) {
            if (!opts.keepDir) {
                for (const l of [...logs]) await l.stop();
                for (const c of [...clients]) c.disconnect();
                clients.clear();
            }
            if (child && server.running) {
                const exited = once(child, "exit");
                child.kill("SIGTERM");
                await exited;
            }
            if (!opts.keepDir) rmSync(dir, { recursive: true, force: true });
        },
        async kill() {
            if (child && server.running) {
                const exited = once(child, "exit");
                child.kill("SIGKILL");
                await exited;
            }
        },
        async start() {
            if (server.running) return;
            await launch();
        },
        async restart() {
            await server.stop({ keepDir: true });
            await server.start();
        },
    };
    return server;
}

function readCa(file: string): Buffer {
    return readFileSync(file);
}
