/**
 * `npm run demo`: the seed's example request through a guild with LLMPhiAgent, printing the
 * GenerationPromptResponse message.
 *
 * Model: PHI2_MODEL (a Phi-2 GGUF) if set; otherwise the tiny test model this package generates
 * (phi2 architecture, the real vocabulary, RANDOM weights — its text is noise; it shows the
 * plumbing, not Phi-2). Device: PHI2_DEVICE (default "auto"); CPU threads: PHI2_THREADS.
 */
import { LLMPhiAgent, PhiAgentProps, isPhiAgentEvent } from "../src/agent/index.js";
import { AgentBuilder, GuildBuilder, formatGuildEvent, type GuildEvent } from "../src/guild/index.js";
import { ErrorMessage, GenerationPromptRequest, GenerationPromptResponse, messageToJSON } from "../src/messages/index.js";
import { ensureTestModel } from "../src/testModel/makeTestModel.js";

const PROMPT = "The benefits of multi-agent systems include";

async function main(): Promise<number> {
    let modelPath = process.env.PHI2_MODEL;
    let randomWeights = false;
    if (!modelPath) {
        console.error("PHI2_MODEL is not set: using the tiny generated test model (random weights).");
        console.error("  For real text: PHI2_MODEL=path/to/phi-2.Q4_K_M.gguf npm run demo");
        modelPath = await ensureTestModel({ shape: "tiny", type: "q8_0", seed: 1 });
        randomWeights = true;
    }
    const device = (process.env.PHI2_DEVICE ?? "auto") as PhiAgentProps["device"];
    const threads = process.env.PHI2_THREADS ? Number(process.env.PHI2_THREADS) : undefined;

    const spec = new AgentBuilder(LLMPhiAgent)
        .setId("phi_agent")
        .setName("Phi-2 LLM")
        .setDescription("Text generation using Microsoft's Phi-2 model")
        .setProperties(new PhiAgentProps({ modelPath, device, threads }))
        .buildSpec();

    let lastPercent = -1;
    const onEvent = (event: GuildEvent) => {
        if (isPhiAgentEvent(event, "model_load_progress")) {
            const percent = Math.floor(event.data.progress * 10) * 10;
            if (percent === lastPercent) return;
            lastPercent = percent;
        }
        if (event.type === "log" && event.level === "debug") return;
        console.error(`[${event.guildId}] ${formatGuildEvent(event)}`);
    };

    const guild = await new GuildBuilder("demo_guild", "Phi-2 demo").onEvent(onEvent).addAgentSpec(spec).launch();
    try {
        const agent = guild.agent<LLMPhiAgent>("phi_agent")!;
        const model = agent.model;
        if (model && /^phi2-test/.test(model.info.name)) randomWeights = true;

        const probe = await guild.probe();
        const client = guild.client("demo_client", "Demo client");
        const request = GenerationPromptRequest.create({ generation_prompt: PROMPT });
        console.error(`\npublishing to "default_topic": ${GenerationPromptRequest.name} ${JSON.stringify(request)}\n`);
        const started = Date.now();
        const sent = client.publish("default_topic", request);
        const reply = await probe.waitForReply(sent, 600_000);

        console.log(messageToJSON(reply, 2));
        if (reply.format === GenerationPromptResponse.format) {
            const usage = GenerationPromptResponse.parse(reply.payload).usage;
            console.error(`\n${GenerationPromptResponse.name} in ${Date.now() - started} ms` +
                (usage ? ` (${usage.prompt_tokens} prompt + ${usage.completion_tokens} generated tokens)` : ""));
            if (randomWeights) {
                console.error("NOTE: this model has RANDOM weights (generated for tests), so generated_response after the prompt is noise.\n" +
                    "      Set PHI2_MODEL to a real Phi-2 GGUF for meaningful text.");
            }
            return 0;
        }
        console.error(`\nThe agent answered with ${reply.format === ErrorMessage.format ? "an ErrorMessage" : reply.format}.`);
        return 1;
    } finally {
        await guild.shutdown();
    }
}

main().then(
    (code) => { process.exitCode = code; },
    (err: unknown) => {
        console.error(err instanceof Error ? `${err.name}: ${err.message}` : err);
        process.exitCode = 1;
    },
);
