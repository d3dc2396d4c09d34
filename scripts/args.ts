/** Tiny flag readers shared by the scripts (`--name value`). */
export function flag(name: string): string | undefined {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : undefined;
}

/** A numeric flag ≥ min, or `fallback`; exits with code 2 and a clear line on a bad value. */
export function numberFlag(name: string, fallback: number, min: number): number {
    const v = flag(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) {
        console.error(`--${name} expects a number ≥ ${min}, got ${JSON.stringify(v)}`);
        process.exit(2);
    }
    return n;
}
