// Loaded by mocha before every test file (.mocharc.json "require"). Keep it tiny.
process.env["PHI_AGENT_TEST"] = "1";
export {};
