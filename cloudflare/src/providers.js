// The mail providers the Worker sends through, behind one interface:
//
//   provider.name                       "cloudflare" | "ses" | "sendgrid"
//   provider.tagsInEvents               true when the provider's events carry our job/recipient tags
//   await provider.send(mail) -> Outcome
//
// `mail` is one message to one recipient: {from: {address, name}, replyTo: [..], to, toName,
// subject, html, text, headers: {name: value}, tags: {job_id, recipient_id, company_id},
// tenant, attachments: [{filename, contentType, content: Uint8Array}] (optional)}. An Outcome says what happened, in the same four kinds as the AWS sender
// (lambdas/email/ses.py):
//   sent     the provider accepted it (messageId set)
//   final    a permanent failure (code, message): never retried
//   retry    the provider certainly accepted nothing: safe to send again (throttled for 429/quota)
//   unknown  the request may have reached the provider: never sent again automatically; the
//            crash-window rules decide from the provider's events
// Error messages are the provider's description of the request (address, quota), never the body.

import { AwsClient } from "aws4fetch";

/** Base64 of bytes (attachments travel base64 in the SES and SendGrid JSON APIs). */
export function base64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

export const PROVIDER_NAMES = Object.freeze(["cloudflare", "ses", "sendgrid"]);

export function outcome(kind, fields = {}) {
  return { kind, messageId: null, code: "", message: "", throttled: false, ...fields };
}

const clip = (text, n = 500) => String(text ?? "").slice(0, n);

/** RFC 2047 encoded-word for a display name that is not plain ASCII (B encoding of UTF-8). */
export function encodeDisplayName(name) {
  const clean = String(name ?? "").replace(/[\r\n\t\u0000-\u001f\u007f]+/g, " ").trim();
  if (!clean) return "";
  if (/^[\x20-\x7e]*$/.test(clean)) return `"${clean.replace(/(["\\])/g, "\\$1")}"`;
  const bytes = new TextEncoder().encode(clean);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return `=?utf-8?b?${btoa(binary)}?=`;
}

export function formatAddress(address, name) {
  const display = encodeDisplayName(name);
  return display ? `${display} <${address}>` : address;
}

/** Wrap fetch so the provider call ends in bounded time; a timeout is an unknown outcome. */
async function timedFetch(fetchImpl, url, init, timeoutMs) {
  return fetchImpl(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
}

// ---------------------------------------------------------------------------------------
// Cloudflare Email Service: the send_email binding, one call per recipient.

// Codes Cloudflare's binding errors carry (E_*), read as the AWS sender reads SES's.
const CF_RETRY = /rate.?limit|too many|quota|throttl|temporar|unavailable|internal/i;
const CF_THROTTLE = /rate.?limit|too many|quota|throttl/i;

export function cloudflareProvider(binding) {
  if (!binding || typeof binding.send !== "function") {
    throw new ProviderConfigError("the EMAIL (send_email) binding is missing");
  }
  return {
    name: "cloudflare",
    tagsInEvents: false,
    async send(mail) {
      const message = {
        to: mail.toName ? { email: mail.to, name: mail.toName } : mail.to,
        from: mail.from.name ? { email: mail.from.address, name: mail.from.name } : mail.from.address,
        subject: mail.subject,
        html: mail.html,
        text: mail.text,
      };
      if (mail.replyTo?.length) message.replyTo = mail.replyTo[0];
      if (mail.headers && Object.keys(mail.headers).length) message.headers = mail.headers;
      if (mail.attachments?.length) {
        message.attachments = mail.attachments.map((a) => ({ content: a.content, filename: a.filename, type: a.contentType, disposition: "attachment" }));
      }
      let answer;
      try {
        answer = await binding.send(message);
      } catch (error) {
        const code = clip(error?.code || error?.name || "send_failed", 64).replace(/[^A-Za-z0-9_.:-]/g, "_");
        const text = clip(error?.message || code);
        if (CF_RETRY.test(`${code} ${text}`)) {
          return outcome("retry", { code, message: text, throttled: CF_THROTTLE.test(`${code} ${text}`) });
        }
        return outcome("final", { code, message: text });
      }
      const messageId = String(answer?.messageId ?? "").replace(/^<|>$/g, "");
      if (!messageId) return outcome("unknown", { code: "outcome_unknown", message: "no messageId in the answer" });
      return outcome("sent", { messageId });
    },
  };
}

// ---------------------------------------------------------------------------------------
// Amazon SES v2 over HTTPS (SendEmail, Simple content with headers), SigV4 by aws4fetch.

const SES_RETRY = new Set([
  "TooManyRequestsException",
  "ThrottlingException",
  "Throttling",
  "LimitExceededException",
  "SendingPausedException",
  "InternalFailure",
  "InternalServerError",
  "ServiceUnavailable",
  "ServiceUnavailableException",
]);
const SES_THROTTLE = new Set(["TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceededException"]);

function sesErrorCode(response, body) {
  const header = response.headers.get("x-amzn-errortype") ?? "";
  const raw = header || body?.__type || body?.code || body?.Code || "";
  return String(raw).split(":")[0].split("#").pop() || `HTTP${response.status}`;
}

export function sesProvider({ accessKeyId, secretAccessKey, region, endpoint, configurationSet, fetchImpl, timeoutMs = 10_000 }) {
  if (!accessKeyId || !secretAccessKey || !region) {
    throw new ProviderConfigError("SES needs SES_ACCESS_KEY_ID, SES_SECRET_ACCESS_KEY and SES_REGION");
  }
  const client = new AwsClient({ accessKeyId, secretAccessKey, region, service: "ses", retries: 0 });
  const base = (endpoint || `https://email.${region}.amazonaws.com`).replace(/\/+$/, "");
  const doFetch = fetchImpl ?? fetch;
  return {
    name: "ses",
    tagsInEvents: true,
    async send(mail) {
      const headers = Object.entries(mail.headers ?? {}).map(([Name, Value]) => ({ Name, Value }));
      const payload = {
        FromEmailAddress: formatAddress(mail.from.address, mail.from.name),
        Destination: { ToAddresses: [formatAddress(mail.to, mail.toName)] },
        Content: {
          Simple: {
            Subject: { Data: mail.subject, Charset: "UTF-8" },
            Body: { Html: { Data: mail.html, Charset: "UTF-8" }, Text: { Data: mail.text, Charset: "UTF-8" } },
            ...(headers.length ? { Headers: headers } : {}),
            ...(mail.attachments?.length
              ? {
                  Attachments: mail.attachments.map((a) => ({
                    RawContent: base64(a.content),
                    FileName: a.filename,
                    ContentType: a.contentType,
                    ContentDisposition: "ATTACHMENT",
                  })),
                }
              : {}),
          },
        },
        // SES tag values allow [A-Za-z0-9_.@-]: ':' in identifiers travels as '@' (as on AWS).
        EmailTags: Object.entries(mail.tags).map(([Name, Value]) => ({ Name, Value: String(Value).replace(/:/g, "@") })),
      };
      if (mail.replyTo?.length) payload.ReplyToAddresses = mail.replyTo;
      if (configurationSet) payload.ConfigurationSetName = configurationSet;
      if (mail.tenant) payload.TenantName = mail.tenant;
      let signed;
      try {
        signed = await client.sign(`${base}/v2/email/outbound-emails`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(payload),
        });
      } catch (error) {
        return outcome("retry", { code: "signing_failed", message: clip(error?.message) });
      }
      let response;
      try {
        response = await timedFetch(doFetch, signed.url, { method: "POST", headers: signed.headers, body: signed.body }, timeoutMs);
      } catch {
        return outcome("unknown", { code: "outcome_unknown", message: "SES connection lost after the request was sent" });
      }
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      if (response.ok && body?.MessageId) return outcome("sent", { messageId: String(body.MessageId) });
      if (response.ok) return outcome("unknown", { code: "outcome_unknown", message: "SES answered without a MessageId" });
      const code = sesErrorCode(response, body);
      const message = clip(body?.message ?? body?.Message ?? code);
      if (SES_RETRY.has(code) || response.status === 429 || response.status >= 500) {
        return outcome("retry", { code, message, throttled: SES_THROTTLE.has(code) || response.status === 429 });
      }
      return outcome("final", { code, message });
    },
  };
}

// ---------------------------------------------------------------------------------------
// SendGrid v3 Mail Send. custom_args carry our tags, so its Event Webhook can name the recipient.

export function sendgridProvider({ apiKey, apiBase, fetchImpl, timeoutMs = 10_000 }) {
  if (!apiKey) throw new ProviderConfigError("SendGrid needs the SENDGRID_API_KEY secret");
  const base = (apiBase || "https://api.sendgrid.com").replace(/\/+$/, "");
  const doFetch = fetchImpl ?? fetch;
  return {
    name: "sendgrid",
    tagsInEvents: true,
    async send(mail) {
      const personalization = {
        to: [mail.toName ? { email: mail.to, name: mail.toName } : { email: mail.to }],
        custom_args: Object.fromEntries(Object.entries(mail.tags).map(([k, v]) => [k, String(v)])),
      };
      const payload = {
        personalizations: [personalization],
        from: mail.from.name ? { email: mail.from.address, name: mail.from.name } : { email: mail.from.address },
        subject: mail.subject,
        content: [
          { type: "text/plain", value: mail.text },
          { type: "text/html", value: mail.html },
        ],
      };
      if (mail.replyTo?.length) payload.reply_to_list = mail.replyTo.map((email) => ({ email }));
      if (mail.headers && Object.keys(mail.headers).length) payload.headers = mail.headers;
      if (mail.attachments?.length) {
        payload.attachments = mail.attachments.map((a) => ({ content: base64(a.content), filename: a.filename, type: a.contentType, disposition: "attachment" }));
      }
      let response;
      try {
        response = await timedFetch(
          doFetch,
          `${base}/v3/mail/send`,
          {
            method: "POST",
            headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
            body: JSON.stringify(payload),
          },
          timeoutMs,
        );
      } catch {
        return outcome("unknown", { code: "outcome_unknown", message: "SendGrid connection lost after the request was sent" });
      }
      if (response.status === 202 || response.status === 200) {
        const messageId = response.headers.get("x-message-id");
        if (messageId) return outcome("sent", { messageId });
        return outcome("unknown", { code: "outcome_unknown", message: "SendGrid answered without X-Message-Id" });
      }
      let detail = "";
      try {
        const body = await response.json();
        detail = body?.errors?.[0]?.message ?? "";
      } catch {
        detail = "";
      }
      const code = `sendgrid_${response.status}`;
      const message = clip(detail || `HTTP ${response.status}`);
      if (response.status === 429) return outcome("retry", { code, message, throttled: true });
      // A bad or revoked key is the operator's to fix: retried with backoff, then final.
      if (response.status >= 500 || response.status === 401 || response.status === 403) {
        return outcome("retry", { code, message });
      }
      return outcome("final", { code, message });
    },
  };
}

export class ProviderConfigError extends Error {
  constructor(detail) {
    super(`provider misconfigured: ${detail}`);
    this.name = "ProviderConfigError";
  }
}

/**
 * The provider routing of this deployment: the PROVIDERS variable,
 * {"transactional": "cloudflare", "campaign": "ses", "companies": {"7": {"transactional": "sendgrid"}}}.
 * Cloudflare Email Service carries transactional mail only, so it is never a campaign provider.
 */
export function providerRouting(env) {
  let config = {};
  if (env.PROVIDERS) {
    try {
      config = JSON.parse(env.PROVIDERS);
    } catch {
      throw new ProviderConfigError("PROVIDERS is not JSON");
    }
  }
  const pick = (category, companyId) => {
    const own = config.companies?.[String(companyId)]?.[category];
    const name = own ?? config[category] ?? (category === "transactional" ? "cloudflare" : null);
    if (name === null) return null;
    if (!PROVIDER_NAMES.includes(name)) throw new ProviderConfigError(`unknown provider ${JSON.stringify(name)}`);
    if (category === "campaign" && name === "cloudflare") {
      throw new ProviderConfigError("Cloudflare Email Service does not carry campaign mail; set PROVIDERS.campaign");
    }
    return name;
  };
  return { pick };
}

/** Build the named provider from the Worker's bindings and secrets. */
export function buildProvider(name, env, fetchImpl) {
  if (name === "cloudflare") return cloudflareProvider(env.EMAIL);
  if (name === "ses") {
    return sesProvider({
      accessKeyId: env.SES_ACCESS_KEY_ID,
      secretAccessKey: env.SES_SECRET_ACCESS_KEY,
      region: env.SES_REGION,
      endpoint: env.SES_ENDPOINT,
      configurationSet: env.SES_CONFIGURATION_SET,
      fetchImpl,
    });
  }
  if (name === "sendgrid") return sendgridProvider({ apiKey: env.SENDGRID_API_KEY, apiBase: env.SENDGRID_API_BASE, fetchImpl });
  throw new ProviderConfigError(`unknown provider ${JSON.stringify(name)}`);
}

/** Per-second send rates (PROVIDER_RATES JSON), with conservative defaults. */
export function providerRate(env, name) {
  const defaults = { cloudflare: 10, ses: 14, sendgrid: 100 };
  let rates = {};
  try {
    rates = env.PROVIDER_RATES ? JSON.parse(env.PROVIDER_RATES) : {};
  } catch {
    throw new ProviderConfigError("PROVIDER_RATES is not JSON");
  }
  const rate = Number(rates[name] ?? defaults[name]);
  if (!(rate > 0)) throw new ProviderConfigError(`the rate of ${name} must be positive`);
  return rate;
}
