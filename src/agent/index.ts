export { LLMPhiAgent } from "./LLMPhiAgent.js";
export { PhiAgentProps, PhiAgentPropsSchema, type PhiAgentPropsInit } from "./PhiAgentProps.js";
