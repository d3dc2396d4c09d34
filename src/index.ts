/**
 * llm-phi-agent: Microsoft's Phi-2 run locally through llama.cpp, as a library, a CLI and a message agent.
 *
 * message → LLMPhiAgent (src/agent) → PhiModel (src/model/PhiModel.ts) → addon (src/native/binding.ts,
 * native/*.cpp) → llama.cpp.
 */
export { PhiModel, type GenerationStream } from "./model/PhiModel.js";
export type {
    DeviceInfo, DeviceSpec, FinishReason, GeneratedTokenLogprob, GenerateOptions, GenerationResult, GenerationUsage, LoadOptions,
    ModelInfo, TokenChunk, TokenizeOptions, TokenLogprob,
} from "./model/types.js";
export { formatPhi2Prompt, formatPhi2Chat, PHI2_STOP, PHI2_USER, PHI2_ASSISTANT, type Phi2ChatMessage } from "./prompt/phi2.js";
export { listDevices, llamaLibraryInfo } from "./model/devices.js";
export { quantizeModel, isQuantType, QUANT_TYPES, type QuantType, type QuantizeOptions } from "./model/quantize.js";
export { GENERATE_DEFAULTS, LOAD_DEFAULTS } from "./model/options.js";
export { GRAMMAR_LIMITS, OPTION_SCHEMAS, OUTPUT_SCHEMAS, threadLimit } from "./model/limits.js";
export { defaultThreads } from "./native/binding.js";
export {
    AbortError, ContextOverflowError, DisposedError, GGUFError, GrammarError, InvalidStateError, JsonSchemaError, MessagingUnavailableError,
    OutputPathError, PhiAgentError, PhiRangeError, PhiTypeError, isAbortError, isArgumentError, type GrammarErrorKind, type PhiErrorCode,
} from "./errors.js";
export { checkGbnf, gbnfLiteral, type GbnfVocab, type ParsedGbnf } from "./grammar/gbnf.js";
export { jsonSchemaToGbnf } from "./grammar/jsonSchema.js";
export { readGGUF, checkPhi2, inspectGGUF, type GGUFHeader, type GGUFSummary } from "./gguf/index.js";
export { makeTestModel, type MakeTestModelOptions, type TestModelShape, type TestModelType } from "./testModel/makeTestModel.js";
export * from "./messages/index.js";
export * from "./messages/wire/index.js";
export * from "./guild/index.js";
export * from "./agent/index.js";
export {
    AgentHost, PROCESSORS, type AgentHostOptions, type AgentHostEvent, type AgentHostState, type RequestLine, type StopSummary,
} from "./guild/rustic/AgentHost.js";
export { joinRedisGuild, type JoinRedisGuildOptions, type JoinedRedisGuild } from "./guild/rustic/join.js";
export { GuildTopics, PYTHON_PHI_AGENT_CLASS, subscribedTopics, type RusticMessage } from "./guild/rustic/protocol.js";
export { UnsupportedRoutingError, InvalidRoutingSlipError } from "./guild/rustic/routing.js";
export {
    RedisRequestClaims, CLAIM_DEFAULTS, defaultReplicaId, type RequestClaims, type ClaimResult, type RedisRequestClaimsOptions, type StoredCopy,
} from "./guild/claims.js";
