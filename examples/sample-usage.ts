/**
 * The seed's "Sample Usage" and "Example Request" for RusticAI's LLMPhiAgent, translated line for
 * line. The Python lines are kept as comments above their TypeScript counterparts.
 *
 *   node dist/examples/sample-usage.js models/phi-2.Q4_K_M.gguf [device]
 *   PHI2_MODEL=models/phi-2.Q4_K_M.gguf [PHI2_DEVICE=cuda:0] [PHI2_THREADS=4] node dist/examples/sample-usage.js
 *
 */
import {
    AgentBuilder, ErrorMessage, GenerationPromptRequest, GenerationPromptResponse, GuildBuilder, LLMPhiAgent, PhiAgentProps,
} from "llm-phi-agent";

const modelPath = process.argv[2] ?? process.env.PHI2_MODEL;
if (!modelPath) {
    console.error("usage: node dist/examples/sample-usage.js <phi-2 GGUF file> [device]   (or set PHI2_MODEL)");
    process.exit(2);
}
// The seed asks for "cuda:0"; "auto" takes a GPU when there is one, else the CPU.
const device = (process.argv[3] ?? process.env.PHI2_DEVICE ?? "auto") as PhiAgentProps["device"];
// CPU threads; default: the physical cores (up to 8).
const threads = process.env.PHI2_THREADS ? Number(process.env.PHI2_THREADS) : undefined;

// # Create the agent spec
// phi_agent_spec = (
//     AgentBuilder(LLMPhiAgent)
const phiAgentSpec = new AgentBuilder(LLMPhiAgent)
    // .set_id("phi_agent")
    .setId("phi_agent")
    // .set_name("Phi-2 LLM")
    .setName("Phi-2 LLM")
    // .set_description("Text generation using Microsoft's Phi-2 model")
    .setDescription("Text generation using Microsoft's Phi-2 model")
    // .set_properties(PhiAgentProps(model_id="microsoft/phi-2", torch_device="cuda:0"))
    .setProperties(new PhiAgentProps({ modelPath, device, threads }))
    // .build_spec()
    .buildSpec();

// # Add to guild
// guild_builder.add_agent_spec(phi_agent_spec)
const guildBuilder = new GuildBuilder("phi_guild");
guildBuilder.addAgentSpec(phiAgentSpec);
const guild = await guildBuilder.launch();
const client = guild.client("my_client");
const replies = await guild.probe(); // collects what arrives on default_topic

// # Create a generation request
// request = GenerationPromptRequest(generation_prompt="The benefits of multi-agent systems include")
const request = GenerationPromptRequest.create({ generation_prompt: "The benefits of multi-agent systems include" });

// # Send to the agent
// client.publish("default_topic", request)
const sent = client.publish("default_topic", request);

// # Example Response: GenerationPromptResponse(generation_prompt=..., generated_response=...)
const reply = await replies.waitForReply(sent, 600_000);
if (reply.format === GenerationPromptResponse.format) {
    const response = GenerationPromptResponse.parse(reply.payload);
    console.log(`GenerationPromptResponse ${JSON.stringify({ generation_prompt: response.generation_prompt, generated_response: response.generated_response }, null, 2)}`);
} else {
    const error = ErrorMessage.parse(reply.payload);
    console.error(`ErrorMessage ${JSON.stringify(error, null, 2)}`);
    process.exitCode = 1;
}

await guild.shutdown();
