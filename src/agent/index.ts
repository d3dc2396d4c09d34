export { LLMPhiAgent, isPhiAgentEvent, type PhiAgentEventData, type PhiAgentEventName } from "./LLMPhiAgent.js";
export { PhiAgentProps, PhiAgentPropsSchema, type PhiAgentPropsInit } from "./PhiAgentProps.js";
