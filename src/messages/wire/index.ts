/**
 * RusticAI's wire format: Messages byte for byte as Python writes them, 64-bit ids as bigints, GemstoneIDs,
 * machine-id leases and dead letters.
 */
export {
    parsePyJson, stringifyPyJson, formatPyFloat, markFloat, isMarkedFloat, clonePyJson, copyJsonMarks,
    type PyJson, type PyJsonObject,
} from "./json.js";
export {
    GemstoneIdGenerator, gemstoneId, gemstoneParts, normalizeGemstoneId, firstIdOf, GEMSTONE_EPOCH_MS,
    GEMSTONE_MAX_TIMESTAMP_MS, Priority, type GemstoneParts,
} from "./gemstone.js";
export {
    parseWireMessage, readWireMessage, serializeWireMessage, validateWireMessage, wireMessageToDict, createWireMessage,
    cloneWireMessage, wireTopicsOf, wireMessageTime, WireMessageError, WIRE_MESSAGE_KEYS, WIRE_PROCESS_STATUSES,
    type WireMessage, type WireParseResult, type WireAgentTag, type WireProcessEntry, type WireForwardHeader,
    type WireRoutingSlip, type WireRoutingRule, type WireRoutingOrigin, type WireRoutingDestination,
    type WirePayloadTransformer, type WireFunctionalTransformer, type WireStateTransformer, type WireStateUpdateFormat,
    type WireTransformationStyle, type WireGuildStackEntry, type WireProcessStatus, type WireInt,
    type CreateWireMessageInit,
} from "./message.js";
export {
    buildDeadLetterMessage, deadLetterTopic, DEAD_LETTER_QUEUE, DEAD_LETTER_SENDER, type DeadLetterInit,
} from "./deadLetter.js";
export { MachineIdLease, machineIdKey, type MachineIdLeaseOptions } from "./machineId.js";
