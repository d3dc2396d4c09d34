/**
 * Devices: the one parser of device strings and the one rule that picks the device for one, used by
 * PhiModel.load, listDevices (and so `phi-agent inspect`) and PhiAgentProps' schema.
 */
import { PhiAgentError, PhiRangeError, PhiTypeError } from "../errors.js";
import { ensureLibrary, loadBinding, loadedLibrarySet, type NativeDevice } from "../native/binding.js";
import type { DeviceInfo } from "./types.js";

export interface ParsedDevice {
    backend: "auto" | "cpu" | "cuda" | "vulkan" | "metal";
    ordinal?: number;
}

/** The device strings accepted (lower case, trimmed): what DeviceSpec spells, plus "mps" (Metal, as in PyTorch). */
export const DEVICE_PATTERN = "^(?:auto|cpu|metal|mps|(?:cuda|vulkan)(?::[0-9]{1,3})?)$";
/** For messages. */
export const DEVICE_VALUES = "\"auto\", \"cpu\", \"cuda\", \"cuda:N\", \"vulkan\", \"vulkan:N\", \"metal\" or \"mps\"";

const DEVICE_RE = new RegExp(DEVICE_PATTERN);

function show(value: unknown): string {
    try {
        return typeof value === "string" ? JSON.stringify(value) : typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
    } catch {
        return String(value);
    }
}

/** Lower case, trimmed, "mps" as "metal": the form PhiAgentProps stores. Does not validate. */
export function normalizeDevice(value: string): string {
    const v = value.trim().toLowerCase();
    return v === "mps" ? "metal" : v;
}

/** "auto" | "cpu" | "cuda" | "cuda:N" | "vulkan" | "vulkan:N" | "metal" ("mps" is Metal). undefined is "auto". */
export function parseDevice(value: unknown): ParsedDevice {
    if (value === undefined) return { backend: "auto" };
    if (typeof value !== "string") throw new PhiTypeError(`Expected "device" to be a string such as "auto", "cpu", "cuda:0", got ${show(value)}`);
    const v = normalizeDevice(value);
    if (!DEVICE_RE.test(v)) throw new PhiRangeError(`Unknown device ${show(value)}: use ${DEVICE_VALUES}`);
    const [backend, ordinal] = v.split(":") as [ParsedDevice["backend"], string | undefined];
    return ordinal !== undefined ? { backend, ordinal: Number(ordinal) } : { backend };
}

/**
 * The device a parsed spec runs on, among the devices of the loaded library set: "cpu" the CPU, "auto" the first
 * GPU else the CPU, "cuda"/"vulkan"/"metal" the first (or N-th) GPU of that backend. Throws ERR_DEVICE_UNAVAILABLE
 * when there is none.
 */
export function pickDevice(devices: readonly NativeDevice[], device: ParsedDevice): NativeDevice {
    const { backend, ordinal } = device;
    const cpu = devices.find((d) => d.type === "cpu") ?? { index: -1, name: "CPU", description: "CPU", type: "cpu", backend: "CPU", memoryFree: 0, memoryTotal: 0 };
    const gpus = devices.filter((d) => d.type === "gpu" || d.type === "igpu");
    if (backend === "cpu") return cpu;
    if (backend === "auto") return gpus[0] ?? cpu;
    const matching = gpus.filter((d) => d.backend.toLowerCase().includes(backend));
    const found = matching[ordinal ?? 0];
    if (!found) {
        const available = devices.map((d) => `${d.name} (${d.backend}, ${d.type})`).join(", ") || "none";
        throw new PhiAgentError("ERR_DEVICE_UNAVAILABLE",
            `No ${backend}${ordinal !== undefined ? ":" + ordinal : ""} device is usable here; devices found: ${available}. ` +
            `Use device "auto" or "cpu", check the GPU driver, or install the @node-llama-cpp package for ${backend}.`);
    }
    return found;
}

/** Loads the library set for `device` and picks its device (what PhiModel.load runs on). */
export function selectDevice(device: ParsedDevice, libraryPath?: string): { device: NativeDevice; devices: NativeDevice[]; libraryDir: string } {
    const libs = ensureLibrary(device.backend, libraryPath);
    const devices = loadBinding().listDevices();
    return { device: pickDevice(devices, device), devices, libraryDir: libs.dir };
}

/**
 * Lists devices of the library set for `device` ("auto" by default). The first call decides this process's
 * llama.cpp library set (see PhiModel.load's `device`). A device that PhiModel.load would refuse is refused here
 * too, with the same ERR_DEVICE_UNAVAILABLE.
 */
export function listDevices(options: { device?: string; libraryPath?: string } = {}): DeviceInfo[] {
    if (typeof options !== "object" || options === null) throw new PhiTypeError(`listDevices() expects an options object such as { device: "cpu" }, got ${show(options)}`);
    const { devices } = selectDevice(parseDevice(options.device), options.libraryPath);
    return devices.map(({ index: _index, ...d }) => d);
}

/** Which llama.cpp library folder this process uses (undefined before the first load). */
export function llamaLibraryInfo(): { dir: string; backend: string; source: string } | undefined {
    const set = loadedLibrarySet();
    return set ? { ...set } : undefined;
}
