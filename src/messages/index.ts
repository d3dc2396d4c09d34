export {
    GenerationPromptRequest,
    GenerationPromptRequestSchema,
    GenerationPromptResponse,
    GenerationPromptResponseSchema,
    ErrorMessage,
    ErrorMessageSchema,
    FinishReasonSchema,
    GenerationUsageSchema,
    type GenerationUsagePayload,
    RUSTIC_MESSAGE_FORMATS_MODULE,
    errorMessageFromError,
} from "./formats.js";
export { defineMessageFormat, formatOf, tagFormat, GENERIC_JSON_FORMAT, type MessageFormat } from "./format.js";
export {
    DEFAULT_TOPIC,
    MessageSchema,
    MessageIdSchema,
    AgentTagSchema,
    type Message,
    type AgentTag,
    type CreateMessageInit,
    createMessage,
    parseMessage,
    messageToJSON,
    isMessage,
    topicsOf,
} from "./message.js";
export {
    Priority,
    GemstoneGenerator,
    GEMSTONE_EPOCH_MS,
    encodeGemstoneId,
    decodeGemstoneId,
    compareMessageIds,
    type GemstoneIdParts,
} from "./ids.js";
export {
    type FieldError,
    fieldErrors,
    formatFieldErrors,
    ValidationTypeError,
    ValidationRangeError,
    isValidationError,
} from "./validation.js";
