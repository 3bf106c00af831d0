// One-click unsubscribe (RFC 8058) and its human page, as on AWS (lambdas/results/intake.py):
//
//   GET  /v1/unsubscribe/{token}   the page with a confirm button; records nothing (mail scanners
//                                  fetch every link in a message)
//   POST /v1/unsubscribe/{token}   one-click POST from the mail client (JSON answer) or the
//                                  page's button (HTML answer): a genuine token is recorded and
//                                  reported to the bridge as an `unsubscribed` result
//
// Tokens are made by offload_contract/unsubscribe.py: <keyset>.c<company>.<b64url recipient>.
// <b64url campaign>.<b64url tag>, the tag the first 16 bytes of HMAC-SHA256 under
// HKDF(root, salt, "unsubscribe-key:v1:company:<id>") over "MRCO-UNSUB-1\n<company>\n<recipient>\n
// <campaign>". The pages are the same bytes as on AWS (offload_contract/pages/unsubscribe.json).

import pages from "../../offload_contract/pages/unsubscribe.json";
import { parseKeysets } from "./keysets.js";
import { jsonResponse } from "./intake.js";
import { keepForPull, publishResults } from "./results.js";
import { ledgerFor } from "./sender.js";
import { KDF_SALT, base64ToBytes, bytesToBase64url, constantTimeEqual, hkdfSha256, makeKeyId, toBytes } from "./signing.js";

export const UNSUBSCRIBE_PATH = /^\/v1\/unsubscribe\/([^/]+)$/;
const SCHEME = "MRCO-UNSUB-1";
const TAG_BYTES = 16;
const MAX_TOKEN_CHARS = 235;
const TOKEN = /^([a-z0-9-]{1,16})\.c(0|[1-9][0-9]{0,18})\.([A-Za-z0-9_-]{2,86})\.([A-Za-z0-9_-]{2,86})\.([A-Za-z0-9_-]{22})$/;
const IDENTIFIER = /^[A-Za-z0-9._:-]{1,64}$/;
const JOB_CAMPAIGN = /^job([0-9]{1,18})$/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

async function tagOf(root, companyId, recipientId, campaignId) {
  const keyBytes = await hkdfSha256(root, KDF_SALT, `unsubscribe-key:v1:company:${companyId}`, 32);
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const message = toBytes([SCHEME, String(companyId), recipientId, campaignId].join("\n"));
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, message)).slice(0, TAG_BYTES);
}

/**
 * The (keyset, companyId, recipientId, campaignId) a genuine token names, or null for anything
 * else: malformed, unknown key set, altered part, another root, non-canonical encoding.
 */
export async function verifyToken(token, roots) {
  const match = typeof token === "string" && token.length <= MAX_TOKEN_CHARS ? TOKEN.exec(token) : null;
  if (!match) return null;
  const [, keyset, companyText, recipientB64, campaignB64, tagB64] = match;
  const root = roots.get(keyset);
  const companyId = Number(companyText);
  if (!root || !Number.isSafeInteger(companyId)) return null;
  let recipientId;
  let campaignId;
  try {
    recipientId = utf8.decode(base64ToBytes(recipientB64));
    campaignId = utf8.decode(base64ToBytes(campaignB64));
  } catch {
    return null;
  }
  if (!IDENTIFIER.test(recipientId) || !IDENTIFIER.test(campaignId)) return null;
  // Canonical form only (no padding or trailing-bit variants): one token per person and campaign.
  if (bytesToBase64url(toBytes(recipientId)) !== recipientB64 || bytesToBase64url(toBytes(campaignId)) !== campaignB64) {
    return null;
  }
  const expected = bytesToBase64url(await tagOf(root, companyId, recipientId, campaignId));
  if (!constantTimeEqual(expected, tagB64)) return null;
  return { keyset, companyId, recipientId, campaignId };
}

/** The contract job_id of a bridge campaign id ("job12" -> "12"), or null. */
export function jobOfCampaign(campaignId) {
  const match = JOB_CAMPAIGN.exec(campaignId);
  return match ? match[1] : null;
}

function publicRecords(env) {
  return env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
}

function wantsHtml(request) {
  const format = new URL(request.url).searchParams.get("format");
  if (format === "json" || format === "html") return format === "html";
  return (request.headers.get("accept") ?? "").includes("text/html");
}

export function pageResponse(status, name) {
  return new Response(pages.pages[name], {
    status,
    headers: {
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-store",
      "content-security-policy": pages.content_security_policy,
    },
  });
}

/**
 * Report the unsubscribe to the bridge: one `unsubscribed` result on the results queue, routed
 * by the job's callback (the SendLedger remembers it). Without a route (not a job this Worker
 * sent), it is kept for the bridge to pull, which every tick does in push and pull mode.
 */
async function report(env, found) {
  const jobId = jobOfCampaign(found.campaignId);
  if (jobId === null || !/^[0-9]{1,18}$/.test(found.recipientId)) return; // nothing the bridge could match
  const result = {
    job_id: jobId,
    recipient_id: found.recipientId,
    status: "unsubscribed",
    attempts: 1,
    occurred_at: Math.floor(Date.now() / 1000),
  };
  const meta = await ledgerFor(env, found.companyId, jobId).meta();
  if (meta && meta.company_id === found.companyId) {
    await publishResults(env, {
      companyId: found.companyId,
      callback: { url: meta.callback_url, key_id: meta.key_id },
      results: [result],
      reporter: "unsubscribe",
    });
    return;
  }
  const batch = {
    type: "result_batch",
    contract_version: 1,
    report_id: `unsub-${crypto.randomUUID()}`,
    company_id: found.companyId,
    reporter: "unsubscribe",
    created_at: result.occurred_at,
    results: [result],
  };
  await keepForPull(env, { key_id: makeKeyId(found.keyset, found.companyId), result_batch: batch });
}

/** GET (the page) and POST (confirm / one-click) on /v1/unsubscribe/{token}. */
export async function handleUnsubscribe(request, env, token) {
  if (request.method !== "GET" && request.method !== "POST") {
    return jsonResponse(405, { error: "method_not_allowed", message: "use GET or POST" }, { allow: "GET, POST" });
  }
  const html = request.method === "GET" || wantsHtml(request);
  const found = await verifyToken(token, parseKeysets(env.HMAC_KEYSETS).roots);
  if (request.method === "GET") return pageResponse(found ? 200 : 404, found ? "confirm" : "invalid");
  if (!found) return html ? pageResponse(404, "invalid") : jsonResponse(404, { error: "unknown_token" });
  try {
    await report(env, found);
  } catch {
    // The queue or the log refused it: nothing recorded, the person (or mail client) may post again.
    return html ? pageResponse(503, "unavailable") : jsonResponse(503, { error: "try_again" });
  }
  await publicRecords(env).unsubscribe(token);
  return html ? pageResponse(200, "done") : jsonResponse(200, { unsubscribed: true });
}
