/** Test models written by our own generator (phi2 architecture, random weights, the real Phi-2 vocabulary). */
import { availableParallelism } from "node:os";
import { ensureTestModel, type TestModelType } from "../../src/testModel/makeTestModel.js";

/** Path of models/test-tiny-<type>-s1.gguf, written on first use (about a second; q4_k_m needs the native addon). */
export function tinyModel(type: TestModelType = "f32"): Promise<string> {
    return ensureTestModel({ shape: "tiny", type, seed: 1 });
}

/** Two threads where the machine has them: tests must also pass on a 1-CPU machine, where threads > CPUs is refused. */
export const TEST_THREADS: number = Math.min(2, availableParallelism());
