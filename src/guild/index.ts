export {
    Agent,
    ProcessContext,
    type AgentSpec,
    type AgentClass,
    type AgentRuntime,
    type AgentState,
    type PropsParser,
    type SendOptions,
} from "./agent.js";
export { AgentBuilder, GuildBuilder, agentSpecToJSON, type AgentPropsOf, type AgentPropsInputOf } from "./builders.js";
export { Guild, type GuildSpec, type GuildState } from "./guild.js";
export { GuildClient, ProbeClient, GuildTimeoutError, type PublishOptions, type RequestOptions } from "./client.js";
export {
    InMemoryMessagingBackend, MESSAGING_DEFAULTS, isDeferredSettlement, type MessagingBackend, type MessageHandler, type DeferredSettlement, type DeliveryInfo,
    type InMemoryMessagingBackendOptions,
} from "./backend.js";
export { formatGuildEvent, type AgentEvent, type GuildEvent, type GuildEventBody, type GuildEventListener, type LogLevel } from "./events.js";
export {
    RedisMessagingBackend, DEFAULT_MESSAGE_TTL_S, maskRedisUrl, redisOptionsFromUrl, namespacedTopic, positionKey,
    messageToWire, wireToMessage, wireMessageOf,
    type RedisMessagingBackendOptions, type RedisBackendEvent, type WireDelivery, type WireHandler,
} from "./redis/RedisMessagingBackend.js";
