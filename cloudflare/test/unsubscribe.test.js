// The unsubscribe page and one-click POST on the Worker, in workerd: the same tokens (shared
// vectors) and the same page bytes as the AWS API, and the report that reaches the bridge.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../src/index.js";
import { validate } from "../src/contract.js";
import { parseKeysets } from "../src/keysets.js";
import { ledgerFor } from "../src/sender.js";
import { jobOfCampaign, verifyToken } from "../src/unsubscribe.js";
import pages from "../../offload_contract/pages/unsubscribe.json";
import vectors from "../../offload_contract/vectors/signing.json";
import { KDF_SALT, bytesToBase64url, decodeRootSecret, hkdfSha256 } from "../src/signing.js";
import { ORIGIN, signedRequest, standInEnv } from "./helpers.js";

const V = vectors.unsubscribe;
const CALLBACK = "https://moodle.example/callbacks/v1/results";
const url = (token) => `${ORIGIN}/v1/unsubscribe/${token}`;
const oneClick = (token) =>
  new Request(url(token), {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "List-Unsubscribe=One-Click",
  });
const records = (e) => e.PUBLIC_RECORDS.get(e.PUBLIC_RECORDS.idFromName("public"));

/** A token as the bridge makes it (checked against the shared vector below); storage is shared
 * between tests, so each test that writes uses its own recipient. */
async function makeToken(company, recipient, campaign) {
  const root = decodeRootSecret(JSON.parse(env.HMAC_KEYSETS).keysets.k2026);
  const keyBytes = await hkdfSha256(root, KDF_SALT, `unsubscribe-key:v1:company:${company}`, 32);
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const tag = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`MRCO-UNSUB-1\n${company}\n${recipient}\n${campaign}`)));
  const b64 = (text) => bytesToBase64url(new TextEncoder().encode(text));
  return ["k2026", `c${company}`, b64(recipient), b64(campaign), bytesToBase64url(tag.slice(0, 16))].join(".");
}

async function pulled(e, company) {
  const answer = await worker.fetch(await signedRequest("/v1/results/pull", JSON.stringify({ ack_through: null, max: 10 }), { company }), e);
  expect(answer.status).toBe(200);
  return (await answer.json()).entries.map((entry) => entry.result_batch);
}

describe("unsubscribe tokens (shared vectors with offload_contract/unsubscribe.py)", () => {
  const roots = parseKeysets(env.HMAC_KEYSETS).roots;

  it("a genuine token names exactly its company, recipient and campaign", async () => {
    expect(await verifyToken(V.token, roots)).toEqual({
      keyset: V.keyset,
      companyId: V.company_id,
      recipientId: V.recipient_id,
      campaignId: V.campaign_id,
    });
    expect(jobOfCampaign(V.campaign_id)).toBe(V.job_id);
    expect(await makeToken(V.company_id, V.recipient_id, V.campaign_id)).toBe(V.token);
    expect(jobOfCampaign("j-9")).toBeNull();
  });

  it.each(V.rejected)("refuses a token: $why", async ({ token }) => {
    expect(await verifyToken(token, roots)).toBeNull();
  });
});

describe("GET /v1/unsubscribe/{token}: the human page", () => {
  it("shows the confirm page, the same bytes as on AWS, and records nothing", async () => {
    const { testEnv, queues } = standInEnv();
    const answer = await worker.fetch(new Request(url(V.token), { headers: { accept: "text/html" } }), testEnv);
    expect(answer.status).toBe(200);
    expect(answer.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(answer.headers.get("content-security-policy")).toBe(pages.content_security_policy);
    const html = await answer.text();
    expect(html).toBe(pages.pages.confirm);
    expect(html).toContain('<form method="post">');
    expect(html).not.toContain(V.token);
    expect(queues.results.sent).toEqual([]);
    expect(await records(testEnv).unsubscribed(V.token)).toBeNull();
    expect(await pulled(testEnv, V.company_id)).toEqual([]);
  });

  it("answers the invalid-link page for a forged token", async () => {
    const answer = await worker.fetch(new Request(url(V.rejected[0].token)), env);
    expect(answer.status).toBe(404);
    expect(await answer.text()).toBe(pages.pages.invalid);
  });
});

describe("POST /v1/unsubscribe/{token}", () => {
  it("one-click: records it and reports an unsubscribed result to the job's callback", async () => {
    const { testEnv, queues } = standInEnv();
    const token = await makeToken(V.company_id, "41", V.campaign_id);
    await ledgerFor(testEnv, V.company_id, V.job_id).remember({
      job_id: V.job_id,
      company_id: V.company_id,
      callback_url: CALLBACK,
      key_id: `k2026.c${V.company_id}`,
    });
    const answer = await worker.fetch(oneClick(token), testEnv);
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({ unsubscribed: true });
    expect(await records(testEnv).unsubscribed(token)).toBeGreaterThan(0);
    const [sent] = queues.results.sent;
    expect(queues.results.sent).toHaveLength(1);
    expect(sent.body.callback_url).toBe(CALLBACK);
    expect(sent.body.key_id).toBe(`k2026.c${V.company_id}`);
    validate("result_batch", sent.body.result_batch);
    expect(sent.body.result_batch).toMatchObject({ company_id: V.company_id, reporter: "unsubscribe" });
    expect(sent.body.result_batch.results).toEqual([
      expect.objectContaining({ job_id: V.job_id, recipient_id: "41", status: "unsubscribed", attempts: 1 }),
    ]);
  });

  it("the page's button answers the done page; without a route the report is kept for the bridge to pull", async () => {
    const { testEnv, queues } = standInEnv();
    const company = 8; // no job of company 8 was ever sent through this Worker: no route
    const answer = await worker.fetch(
      new Request(url(await makeToken(company, "42", "job77")), {
        method: "POST",
        headers: { accept: "text/html", "content-type": "application/x-www-form-urlencoded" },
        body: "confirm=yes",
      }),
      testEnv,
    );
    expect(answer.status).toBe(200);
    expect(await answer.text()).toBe(pages.pages.done);
    expect(queues.results.sent).toEqual([]);
    const [batch] = await pulled(testEnv, company);
    validate("result_batch", batch);
    expect(batch.company_id).toBe(company);
    expect(batch.results.map((r) => [r.job_id, r.recipient_id, r.status])).toEqual([["77", "42", "unsubscribed"]]);
    expect(await pulled(testEnv, company + 1)).toEqual([]); // another company's key sees nothing
  });

  it.each(V.rejected)("a forged, altered or other person's token changes nothing: $why", async ({ token }) => {
    const { testEnv, queues } = standInEnv();
    const answer = await worker.fetch(oneClick(token), testEnv);
    expect(answer.status).toBe(404);
    expect(await answer.json()).toEqual({ error: "unknown_token" });
    expect(queues.results.sent).toEqual([]);
    expect(await records(testEnv).unsubscribed(token)).toBeNull();
    expect(await pulled(testEnv, V.company_id)).toEqual([]);
  });

  it("when the report cannot be queued, answers 503 and records nothing (the click can be repeated)", async () => {
    const { testEnv } = standInEnv();
    const token = await makeToken(V.company_id, "43", V.campaign_id);
    await ledgerFor(testEnv, V.company_id, V.job_id).remember({
      job_id: V.job_id,
      company_id: V.company_id,
      callback_url: CALLBACK,
      key_id: `k2026.c${V.company_id}`,
    });
    const down = { ...testEnv, RESULTS_QUEUE: { send: async () => { throw new Error("queue down"); } } };
    const answer = await worker.fetch(oneClick(token), down);
    expect(answer.status).toBe(503);
    expect(await answer.json()).toEqual({ error: "try_again" });
    expect(await records(testEnv).unsubscribed(token)).toBeNull();
  });

  it("other methods are 405", async () => {
    const answer = await worker.fetch(new Request(url(V.token), { method: "PUT" }), env);
    expect(answer.status).toBe(405);
  });
});
