/**
 * A second process of a TypeScript guild over Redis (for test/redisBackend.test.ts): launches guild argv[3] with
 * one agent, "echo" (answers tests.redis.Ping with tests.redis.Pong, naming its process), on the Redis at argv[2];
 * prints "ready" once it runs, shuts down and exits 0 on SIGTERM.
 */
import { fileURLToPath } from "node:url";
import { Type } from "@sinclair/typebox";
import { Agent, AgentBuilder, GuildBuilder, defineMessageFormat, type AgentSpec } from "../../src/index.js";

export const Ping = defineMessageFormat("tests.redis.Ping", Type.Object({ text: Type.String() }));
export const Pong = defineMessageFormat("tests.redis.Pong", Type.Object({ text: Type.String(), pid: Type.Integer() }));

export class PingAgent extends Agent {
    constructor(spec: AgentSpec<Record<string, never>>) {
        super(spec);
        this.handle(Ping, (ctx) => {
            ctx.send(Pong.create({ text: ctx.payload.text.toUpperCase(), pid: process.pid }));
        });
    }
}

async function main(): Promise<void> {
    const [url, guildId] = process.argv.slice(2);
    const guild = await new GuildBuilder(guildId)
        .setRedisMessaging(url!)
        .addAgentSpec(new AgentBuilder(PingAgent).setId("echo").setName("Echo").buildSpec())
        .launch();
    process.once("SIGTERM", () => {
        void guild.shutdown().then(() => process.exit(0), () => process.exit(1));
    });
    process.stdout.write("ready\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
    main().catch((err: unknown) => {
        process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`);
        process.exit(1);
    });
}
