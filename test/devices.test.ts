/**
 * Devices: one parser and one pick rule for PhiModel.load, listDevices (and `phi-agent inspect`) and PhiAgentProps.
 * Which library set a process uses is decided by its first call, so the unavailable-device checks run in a fresh
 * process each.
 */
import { expect } from "chai";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import * as lib from "../src/index.js";
import { tinyModel } from "./helpers/models.js";

const INDEX = new URL("../src/index.js", import.meta.url).href;
const CLI = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));

/** Runs `body` (an async function's source, given `lib`) in a fresh node and returns what it printed. */
async function fresh(body: string): Promise<string> {
    const script = `import(${JSON.stringify(INDEX)}).then(async (lib) => { ${body} }).catch((e) => console.log("THREW", e.code, e.message))`;
    const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { timeout: 60000 });
    return stdout.trim();
}

describe("devices", function () {
    this.timeout(60000);

    it("listDevices({ device }) refuses a device PhiModel.load refuses, with the same ERR_DEVICE_UNAVAILABLE", async () => {
        const modelPath = await tinyModel("f32");
        for (const device of ["cuda:7", "vulkan:9"]) {
            const listed = await fresh(`console.log("LISTED", JSON.stringify(lib.listDevices({ device: ${JSON.stringify(device)} })))`);
            const loaded = await fresh(`const m = await lib.PhiModel.load({ modelPath: ${JSON.stringify(modelPath)}, device: ${JSON.stringify(device)}, contextSize: 32 }); console.log("LOADED", m.info.runtime.device); await m.dispose()`);
            expect(loaded, `load ${device}`).to.match(/^THREW ERR_DEVICE_UNAVAILABLE /);
            expect(listed, `listDevices ${device}`).to.match(/^THREW ERR_DEVICE_UNAVAILABLE /);
        }
    });

    it("phi-agent inspect --device cuda:7 fails (exit 1, ERR_DEVICE_UNAVAILABLE) like generate does", async () => {
        const modelPath = await tinyModel("f32");
        const run = await promisify(execFile)(process.execPath, [CLI, "inspect", "--model", modelPath, "--device", "cuda:7"], { timeout: 60000 })
            .then((r) => ({ code: 0, stderr: r.stderr, stdout: r.stdout }), (e: { code: number; stderr: string; stdout: string }) => e);
        expect(run.code, run.stdout).to.equal(1);
        expect(run.stderr).to.match(/ERR_DEVICE_UNAVAILABLE/);
    });

    it("listDevices() with the CPU lists the CPU", () => {
        const devices = lib.listDevices({ device: "cpu" });
        expect(devices.some((d) => d.type === "cpu")).to.equal(true);
    });

    it("PhiAgentProps accepts exactly the device strings PhiModel.load accepts", async () => {
        const modelPath = "m.gguf";
        const samples = ["auto", "cpu", "CPU", " cuda ", "cuda:0", "cuda:123", "cuda:1234", "vulkan", "vulkan:2", "metal", "mps", "MPS",
            "metal:0", "mps:1", "cpu:0", "auto:1", "gpu", "cuda:", "cuda:-1", "cuda:x", ""];
        for (const device of samples) {
            let viaProps = true;
            try { new lib.PhiAgentProps({ modelPath, device: device as never }); } catch { viaProps = false; }
            const err = await lib.PhiModel.load({ modelPath: "/nonexistent/m.gguf", device: device as never }).then(() => undefined, (e: unknown) => e);
            const viaLoad = !(err instanceof RangeError || err instanceof TypeError); // past the device check: the file is missing
            expect(viaProps, JSON.stringify(device)).to.equal(viaLoad);
        }
    });
});
