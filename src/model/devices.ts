/** The compute devices llama.cpp can use here. */
import { ensureLibrary, loadBinding, loadedLibrarySet } from "../native/binding.js";
import { parseDevice } from "./options.js";
import type { DeviceInfo } from "./types.js";

/**
 * Lists devices of the library set for `device` ("auto" by default). The first call decides this process's
 * llama.cpp library set (see PhiModel.load's `device`).
 */
export function listDevices(options: { device?: string; libraryPath?: string } = {}): DeviceInfo[] {
    const parsed = parseDevice(options.device);
    ensureLibrary(parsed.backend, options.libraryPath);
    return loadBinding().listDevices().map(({ index: _index, ...d }) => d);
}

/** Which llama.cpp library folder this process uses (undefined before the first load). */
export function llamaLibraryInfo(): { dir: string; backend: string; source: string } | undefined {
    const set = loadedLibrarySet();
    return set ? { ...set } : undefined;
}
