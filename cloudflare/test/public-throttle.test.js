// The public routes are throttled per client address by the Workers rate-limit bindings configured
// in wrangler.jsonc (VERIFY_LIMITER for verify, UNSUBSCRIBE_LIMITER for unsubscribe): the 61st
// request in a minute from one address gets 429, another address is still answered, and one
// route's flood does not use up the other's allowance.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index.js";
import { ORIGIN } from "./helpers.js";

const LIMIT = 60; // wrangler.jsonc ratelimits[*].simple.limit
const PERIOD_MS = 60_000;
const VERIFY = "/v1/certificates/verify/NOPE0000NOPE";
const UNSUBSCRIBE = "/v1/unsubscribe/not-a-token";

const ask = (path, address) => worker.fetch(new Request(`${ORIGIN}${path}`, { headers: { "cf-connecting-ip": address } }), env);

/** The statuses of LIMIT + 1 requests from `address` to `path`, all inside one limiter window. */
async function flood(path, address) {
  // The binding counts per fixed 60 s window: a run that crossed a window boundary is repeated
  // with a fresh address, so the count is never split between two windows.
  for (let attempt = 0; attempt < 3; attempt++) {
    const client = `${address}${attempt}`;
    const window = Math.floor(Date.now() / PERIOD_MS);
    const statuses = [];
    let last;
    for (let i = 0; i <= LIMIT; i++) {
      last = await ask(path, client);
      statuses.push(last.status);
    }
    if (Math.floor(Date.now() / PERIOD_MS) === window) return { statuses, last, client };
  }
  throw new Error("three runs crossed a window boundary");
}

describe.each([
  ["verify", VERIFY, UNSUBSCRIBE, "198.51.100."],
  ["unsubscribe", UNSUBSCRIBE, VERIFY, "198.51.101."],
])("%s route throttle", (_name, path, otherPath, prefix) => {
  it("answers 429 to the client past the limit, and still answers another client and route", async () => {
    const { statuses, last, client } = await flood(path, prefix);
    const first = statuses[0];
    expect(first).toBeLessThan(429);
    expect(statuses.slice(0, LIMIT).every((s) => s === first)).toBe(true);
    expect(statuses[LIMIT]).toBe(429);
    expect(last.headers.get("retry-after")).toBe("60");
    expect((await last.json()).error).toBe("too_many_requests");
    expect((await ask(path, "203.0.113.7")).status).toBe(first);
    expect((await ask(otherPath, client)).status).not.toBe(429);
  });
});
