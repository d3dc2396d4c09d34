/**
 * The checks every file-writing API runs on its output path before doing any work (quantizeModel, makeTestModel):
 * the folder exists, the path is not a folder, not one of the inputs (by device and inode, so links count too,
 * even with `overwrite`), and an existing file is replaced only when `overwrite` is true.
 */
import fs from "node:fs";
import path from "node:path";
import { OutputPathError } from "../errors.js";

export interface OutputCheck {
    /** replace an existing file (never an input) */
    overwrite?: boolean;
    /** files the operation reads; the output may never be one of them */
    inputs?: readonly string[];
    /** what the error messages call the option that allows overwriting */
    overwriteHint?: string;
}

function statOrUndefined(p: string): fs.Stats | undefined {
    try {
        return fs.statSync(p);
    } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ENOTDIR") return undefined;
        throw err;
    }
}

/** Throws an OutputPathError when `out` cannot be written as asked; returns its absolute path. */
export function checkOutputPath(out: string, options: OutputCheck = {}): string {
    const abs = path.resolve(out);
    const hint = options.overwriteHint ?? "pass { overwrite: true }";
    const dir = path.dirname(abs);
    const dirStat = statOrUndefined(dir);
    if (!dirStat) throw new OutputPathError("ERR_INVALID_OUTPUT", `Cannot write ${out}: the folder ${dir} does not exist; create it first`, abs);
    if (!dirStat.isDirectory()) throw new OutputPathError("ERR_INVALID_OUTPUT", `Cannot write ${out}: ${dir} is not a folder`, abs);
    const st = statOrUndefined(abs);
    if (!st) return abs;
    if (st.isDirectory()) throw new OutputPathError("ERR_INVALID_OUTPUT", `Cannot write ${out}: it is a folder; give a file name`, abs);
    for (const input of options.inputs ?? []) {
        const ist = statOrUndefined(input);
        if (ist && ist.dev === st.dev && ist.ino === st.ino) {
            throw new OutputPathError("ERR_INVALID_OUTPUT", `Refusing to write ${out}: it is the input file ${input}; choose another output path`, abs);
        }
    }
    if (!options.overwrite) throw new OutputPathError("ERR_OUTPUT_EXISTS", `${out} already exists; ${hint} to replace it`, abs);
    return abs;
}
