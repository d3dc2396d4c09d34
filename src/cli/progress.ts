/**
 * A one-line progress bar on stderr (redrawn in place on a TTY, a few plain lines otherwise). With `erase`, done()
 * clears the line on a TTY instead of ending it (for a transient line such as "loading").
 */
export function progressBar(label: string, erase = false): { update: (fraction: number, detail?: string) => void; done: () => void } {
    const tty = process.stderr.isTTY === true;
    let lastPrinted = -10;
    const started = Date.now();
    const update = (fraction: number, detail?: string) => {
        const pct = Math.max(0, Math.min(100, Math.floor(fraction * 100)));
        if (tty) {
            const width = 30;
            const filled = Math.round((pct / 100) * width);
            const secs = ((Date.now() - started) / 1000).toFixed(0);
            process.stderr.write(`\r${label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${String(pct).padStart(3)}% ${secs}s ${detail ?? ""}\x1b[K`);
        } else if (pct >= lastPrinted + 10) {
            lastPrinted = pct - (pct % 10);
            process.stderr.write(`${label}: ${lastPrinted}%${detail ? " " + detail : ""}\n`);
        }
    };
    return { update, done: () => { if (tty) process.stderr.write(erase ? "\r\x1b[K" : "\n"); } };
}
