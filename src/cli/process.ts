/**
 * How the CLI meets its process, as Unix tools do:
 *  - Ctrl-C (SIGINT): a command that took `interruptSignal()` gets it aborted and finishes up (the exit code is
 *    130 either way); a command that did not, or a second Ctrl-C, exits 130 at once.
 *  - stdout closed by the reader (`phi-agent generate ... | head -c 20`): no stack trace; the command is aborted
 *    through the same signal and the exit code is 141 (128 + SIGPIPE, what a shell reports for a tool killed by it).
 */
export const EXIT_SIGINT = 130;
export const EXIT_SIGPIPE = 141;

const controller = new AbortController();
const stopController = new AbortController();
let claimed = false;
let graceful = false;
let interrupted = false;
let pipeClosed = false;
let installed = false;

/** The signal a command aborts on (Ctrl-C, or its stdout closed); taking it means the command finishes up itself. */
export function interruptSignal(): AbortSignal {
    claimed = true;
    return controller.signal;
}

/**
 * For long-running commands (a worker): SIGTERM and SIGINT abort the returned signal, once, and the command
 * shuts down in its own time and exits 0; a second signal exits 130 at once.
 */
export function shutdownSignal(): AbortSignal {
    if (!graceful) {
        graceful = true;
        process.on("SIGTERM", onStopSignal);
    }
    return stopController.signal;
}

function onStopSignal(signal: NodeJS.Signals): void {
    if (stopController.signal.aborted) process.exit(EXIT_SIGINT);
    stopController.abort(new Error(`stopping (${signal})`));
}

/** True once stdout's reader has gone away: writes are dropped from then on. */
export function stdoutClosed(): boolean {
    return pipeClosed;
}

/** The exit code the process's fate overrides the command's with (130 after Ctrl-C, 141 after a closed stdout). */
export function exitOverride(): number | undefined {
    if (interrupted) return EXIT_SIGINT;
    if (pipeClosed) return EXIT_SIGPIPE;
    return undefined;
}

/** Installs the SIGINT and EPIPE handling (once per process). */
export function installProcessHandlers(): void {
    if (installed) return;
    installed = true;
    process.on("SIGINT", () => {
        if (graceful) return onStopSignal("SIGINT");
        if (interrupted || !claimed) process.exit(EXIT_SIGINT);
        interrupted = true;
        controller.abort(new Error("interrupted (SIGINT)"));
    });
    process.stdout.on("error", (err: NodeJS.ErrnoException) => {
        if (err.code !== "EPIPE" && err.code !== "ERR_STREAM_DESTROYED") throw err;
        if (pipeClosed) return;
        pipeClosed = true;
        if (!claimed) process.exit(EXIT_SIGPIPE);
        controller.abort(new Error("stdout was closed"));
    });
    process.stderr.on("error", () => undefined); // nowhere left to report to
}

/** Writes to stdout unless its reader has gone away. */
export function out(text: string): void {
    if (!pipeClosed) process.stdout.write(text);
}
