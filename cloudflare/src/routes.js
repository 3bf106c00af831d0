// The Worker's routes besides the intake (docs/cloudflare.md, "Routes"):
//
//   GET  /v1/capabilities              signed (company key): what this Worker can process
//   POST /v1/results/pull              signed: results kept for the bridge (pull mode, DLQ)
//   POST /v1/events/ses                SES events via an EventBridge API destination (bearer token)
//   POST /v1/events/sendgrid           SendGrid Event Webhook (ECDSA signature)
//   GET  /v1/unsubscribe/{token}       public: the unsubscribe page (a confirm button), as on AWS
//   POST /v1/unsubscribe/{token}       public: RFC 8058 one-click unsubscribe, as on AWS (unsubscribe.js);
//                                      both throttled per client address (UNSUBSCRIBE_LIMITER, 429)
//   GET  /v1/certificates/verify/{code} public: as on AWS, for the certificates this Worker rendered;
//                                      throttled per client address (VERIFY_LIMITER, 429)
//   PUT/GET /v1/objects/{key}          signed: the company's own R2 objects (objects.js)
//   POST /v1/certificates/revoke       signed: revoke or reinstate one of the company's certificates

import { RENDERED_SCRIPTS, rendererCoverage } from "./certificates.js";
import { validate } from "./contract.js";
import { VERIFY_PAGE_CSP, verifyPage, wantsJson } from "./verify-page.js";
import { applyEvents, normaliseSendgridEvent, normaliseSesEvent, verifySendgridSignature } from "./events.js";
import { IntakeError, jsonResponse, parseJson, readSignedRequest, routeErrorResponse } from "./intake.js";
import { OBJECTS_PREFIX, handleObject } from "./objects.js";
import { ProviderConfigError, buildProvider, providerRouting } from "./providers.js";
import { PULL_PATH, pullResults } from "./results.js";
import { constantTimeEqual } from "./signing.js";
import { UNSUBSCRIBE_PATH, handleUnsubscribe } from "./unsubscribe.js";

export const CAPABILITIES_PATH = "/v1/capabilities";
export const REVOKE_PATH = "/v1/certificates/revoke";
const MAX_REASON = 500;
const CODE = /^[A-Z0-9]{8,32}$/;
/** Codes are issued with 12 of [A-Z0-9] (62 bits): shorter ones are never looked up, as on AWS
 *  (lambdas/results/intake.py CODE), so a guess at a short code costs the guesser and finds nothing. */
const VERIFY_CODE = /^[A-Z0-9]{12,32}$/;
const EVENT_BODY_LIMIT = 1_048_576;

/**
 * What this deployment can process for `companyId` (contract message "capabilities").
 * `coverage`: the renderer's code point ranges, null when its fonts are not in R2
 * (certificate_batch is offered only with them).
 */
export function capabilities(env, companyId, processors, { coverage = null } = {}) {
  const routing = providerRouting(env);
  // A provider this deployment cannot build (a missing secret or binding) is not offered.
  const usable = (name) => {
    if (name === null) return null;
    try {
      buildProvider(name, env);
      return name;
    } catch (error) {
      if (error instanceof ProviderConfigError) return null;
      throw error;
    }
  };
  const transactional = usable(routing.pick("transactional", companyId));
  const campaign = usable(routing.pick("campaign", companyId));
  const answer = {
    type: "capabilities",
    contract_version: 1,
    message_types: [...processors.keys()].filter((t) => t === "email_batch" || (t === "certificate_batch" && coverage !== null && transactional)),
    email: {
      // jinja2 cannot run in workerd: the bridge renders list templates for the Cloudflare path.
      content_kinds: ["rendered", "reference"],
      categories: [...(transactional ? ["transactional"] : []), ...(campaign ? ["campaign"] : [])],
      // Attachments by R2 reference only: the certificates this Worker renders.
      attachments: true,
      providers: { transactional, campaign },
    },
    results: { mode: env.RESULTS_MODE === "pull" ? "pull" : "push", pull_path: PULL_PATH },
  };
  if (answer.message_types.includes("certificate_batch")) {
    // The scripts its fonts draw; a certificate needing another one is routed elsewhere by the bridge.
    answer.certificates = { scripts: [...RENDERED_SCRIPTS], code_points: coverage };
  }
  validate("capabilities", answer);
  return answer;
}

function publicRecords(env) {
  return env.PUBLIC_RECORDS.get(env.PUBLIC_RECORDS.idFromName("public"));
}

async function readLimited(request, limit) {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > limit) throw new IntakeError(413, "body_too_large", `request bodies are limited to ${limit} bytes`);
  const body = new Uint8Array(await request.arrayBuffer());
  if (body.byteLength > limit) throw new IntakeError(413, "body_too_large", `request bodies are limited to ${limit} bytes`);
  return body;
}

/**
 * Per-client throttle of the public routes: Workers' rate-limit bindings (wrangler.jsonc: a limit
 * per 60 s), VERIFY_LIMITER for verify (page and JSON) and UNSUBSCRIBE_LIMITER for unsubscribe,
 * keyed by the client's address, so one client's flood answers 429 to it alone (as the WAF's
 * per-address rule does on AWS). Without the binding (an older deployment) nothing is throttled
 * here; the account's WAF rules still apply.
 */
async function throttled(limiter, request, what) {
  if (!limiter) return null;
  const client = request.headers.get("cf-connecting-ip") || "unknown";
  const { success } = await limiter.limit({ key: `${what}:${client}` });
  if (success) return null;
  return jsonResponse(429, { error: "too_many_requests", message: `too many ${what} requests from this address; try again in a minute` }, { "retry-after": "60" });
}

const methodNotAllowed = (allow) => jsonResponse(405, { error: "method_not_allowed", message: `use ${allow}` }, { allow });

/** Answer `request` if it is one of these routes, else null. */
export async function handleRoute(request, env, { processors } = {}) {
  const { pathname } = new URL(request.url);
  try {
    if (pathname === CAPABILITIES_PATH) {
      if (request.method !== "GET") return methodNotAllowed("GET");
      const { verified } = await readSignedRequest(request, env, 0);
      const coverage = await rendererCoverage(env.OFFLOAD_BUCKET);
      return jsonResponse(200, capabilities(env, verified.companyId, processors ?? new Map(), { coverage }));
    }
    if (pathname === PULL_PATH) {
      if (request.method !== "POST") return methodNotAllowed("POST");
      const { verified, body } = await readSignedRequest(request, env);
      const ask = parseJson(body);
      if (!ask || typeof ask !== "object" || Array.isArray(ask)) {
        throw new IntakeError(400, "bad_request", "the body must be a JSON object");
      }
      const answer = await pullResults(env, verified.companyId, ask);
      return jsonResponse(answer.status, answer.body);
    }
    if (pathname === "/v1/events/ses") {
      if (request.method !== "POST") return methodNotAllowed("POST");
      const expected = env.SES_EVENTS_TOKEN;
      const given = (request.headers.get("authorization") ?? "").replace(/^Bearer\s+/i, "");
      if (!expected || !given || !constantTimeEqual(given, expected)) {
        return jsonResponse(401, { error: "unauthorized", message: "a valid bearer token is required" });
      }
      const parsed = parseJson(await readLimited(request, EVENT_BODY_LIMIT));
      const events = (Array.isArray(parsed) ? parsed : [parsed]).map(normaliseSesEvent);
      const counts = await applyEvents(env, events);
      return jsonResponse(200, counts);
    }
    if (pathname === "/v1/events/sendgrid") {
      if (request.method !== "POST") return methodNotAllowed("POST");
      const body = await readLimited(request, EVENT_BODY_LIMIT);
      if (!(await verifySendgridSignature(env.SENDGRID_WEBHOOK_PUBLIC_KEY, request.headers, body))) {
        return jsonResponse(401, { error: "bad_signature", message: "the Event Webhook signature does not verify" });
      }
      const parsed = parseJson(body);
      if (!Array.isArray(parsed)) throw new IntakeError(400, "bad_request", "the Event Webhook posts a JSON array");
      const counts = await applyEvents(env, parsed.map(normaliseSendgridEvent));
      return jsonResponse(200, counts);
    }
    if (pathname.startsWith(OBJECTS_PREFIX)) return await handleObject(request, env);
    if (pathname === REVOKE_PATH) {
      if (request.method !== "POST") return methodNotAllowed("POST");
      const { verified, body } = await readSignedRequest(request, env);
      const ask = parseJson(body);
      const reason = ask?.reason;
      if (!ask || typeof ask !== "object" || typeof ask.code !== "string" || !CODE.test(ask.code) || typeof ask.revoke !== "boolean") {
        throw new IntakeError(400, "bad_request", 'the body must be {"code": <verification code>, "revoke": true|false, "reason": <text>}');
      }
      if (ask.revoke && (typeof reason !== "string" || !reason.trim())) {
        throw new IntakeError(400, "bad_request", "a revocation needs a reason");
      }
      const changed = await publicRecords(env).setRevoked(ask.code, verified.companyId, ask.revoke ? reason.trim().slice(0, MAX_REASON) : null);
      if (!changed) return jsonResponse(404, { error: "not_found", message: "no certificate with this code belongs to the company" });
      return jsonResponse(200, { code: ask.code, revoked: ask.revoke });
    }
    const unsubscribe = UNSUBSCRIBE_PATH.exec(pathname);
    if (unsubscribe) {
      const limited = await throttled(env.UNSUBSCRIBE_LIMITER, request, "unsubscribe");
      return limited ?? (await handleUnsubscribe(request, env, unsubscribe[1]));
    }
    const verify = /^\/v1\/certificates\/verify\/([^/]+)$/.exec(pathname);
    if (verify) {
      if (request.method !== "GET") return methodNotAllowed("GET");
      const limited = await throttled(env.VERIFY_LIMITER, request, "verification");
      if (limited) return limited;
      const code = verify[1];
      const record = VERIFY_CODE.test(code) ? await publicRecords(env).certificate(code) : null;
      if (!wantsJson(request)) {
        // The person who scanned the QR code gets the same page as on AWS (verify-page.js).
        return new Response(verifyPage(code, record, request.headers.get("accept-language")), {
          status: record ? 200 : 404,
          headers: {
            "content-type": "text/html; charset=utf-8",
            "content-security-policy": VERIFY_PAGE_CSP,
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
          },
        });
      }
      if (!record) return jsonResponse(404, { valid: false });
      // A revoked certificate keeps its record: the answer says so, as on AWS.
      return jsonResponse(200, {
        valid: record.revoked_at === null || record.revoked_at === undefined,
        code,
        learner_name: record.learner_name,
        course_name: record.course_name,
        completed_at: record.completed_at,
        ...(record.issuer_name ? { issuer_name: record.issuer_name } : {}),
        ...(record.revoked_at ? { revoked_at: record.revoked_at } : {}),
      });
    }
    return null;
  } catch (error) {
    return routeErrorResponse(error);
  }
}
