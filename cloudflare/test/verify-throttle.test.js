// The public verify route is throttled per client address (VERIFY_LIMITER, the Workers rate-limit
// binding configured in wrangler.jsonc): the 61st request in a minute from one address gets 429,
// another address is still answered.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index.js";
import { ORIGIN } from "./helpers.js";

const LIMIT = 60; // wrangler.jsonc ratelimits[VERIFY_LIMITER].simple.limit
const PERIOD_MS = 60_000;

const ask = (address) =>
  worker.fetch(new Request(`${ORIGIN}/v1/certificates/verify/NOPE0000NOPE`, { headers: { "cf-connecting-ip": address } }), env);

/** The statuses of LIMIT + 1 requests from `address`, all inside one limiter window. */
async function flood(address) {
  // The binding counts per fixed 60 s window: a run that crossed a window boundary is repeated
  // with a fresh address, so the count is never split between two windows.
  for (let attempt = 0; attempt < 3; attempt++) {
    const client = `${address}${attempt}`;
    const window = Math.floor(Date.now() / PERIOD_MS);
    const statuses = [];
    let last;
    for (let i = 0; i <= LIMIT; i++) {
      last = await ask(client);
      statuses.push(last.status);
    }
    if (Math.floor(Date.now() / PERIOD_MS) === window) return { statuses, last };
  }
  throw new Error("three runs crossed a window boundary");
}

describe("verify route throttle", () => {
  it("answers 429 to the client past the limit and still answers another client", async () => {
    const { statuses, last } = await flood("198.51.100.");
    expect(statuses.slice(0, LIMIT).every((s) => s === 404)).toBe(true);
    expect(statuses[LIMIT]).toBe(429);
    expect(last.headers.get("retry-after")).toBe("60");
    expect((await last.json()).error).toBe("too_many_requests");
    const other = await ask("203.0.113.7");
    expect(other.status).toBe(404);
  });
});
