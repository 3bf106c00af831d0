// Local stand-ins for the three providers, faithful to what the Worker relies on (never the
// real internet). Each records every message it ACCEPTED, so tests can count deliveries per
// (job, recipient): the exactly-once oracle. Faults are scripted per stand-in:
//   failNext: [..]   answers to give, in order, before normal service resumes (429 bursts, 5xx)
//   rejected: Set     addresses answered with a permanent error

import { AwsV4Signer } from "aws4fetch";

export const SES_CREDENTIALS = { accessKeyId: "AKIDSTANDIN", secretAccessKey: "standin-secret-key", region: "eu-west-1" };

function jsonAnswer(status, body, headers = {}) {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

/** Cloudflare Email Service's send_email binding: structured send(), one recipient per call. */
export class CloudflareEmailStandIn {
  constructor() {
    this.accepted = [];
    this.calls = 0;
    this.failNext = [];
    this.suppressed = new Set();
  }

  async send(message) {
    this.calls += 1;
    const fault = this.failNext.shift();
    if (fault) {
      const error = new Error(fault.message);
      error.code = fault.code;
      throw error;
    }
    const recipients = Array.isArray(message.to) ? message.to : [message.to];
    for (const to of recipients) {
      const address = typeof to === "string" ? to : to.email;
      // One suppressed recipient fails the whole call.
      if (this.suppressed.has(address.toLowerCase())) {
        const error = new Error(`recipient ${address} is suppressed`);
        error.code = "E_RECIPIENT_SUPPRESSED";
        throw error;
      }
    }
    if (!message.subject || (!message.html && !message.text) || !message.from) {
      const error = new Error("from, subject and a body are required");
      error.code = "E_VALIDATION_ERROR";
      throw error;
    }
    const messageId = `<${crypto.randomUUID()}@cloudflare.email>`;
    this.accepted.push({ ...message, messageId, to: recipients.map((t) => (typeof t === "string" ? t : t.email)) });
    return { messageId };
  }

  /** An Email Sending event in the nested format its event subscription delivers. */
  static event(type, messageId, recipient, extra = {}, at = new Date()) {
    return {
      type: `cf.email.sending.message.${type}`,
      source: { type: "email.sending", domain: "example.org" },
      payload: { eventId: crypto.randomUUID(), messageId, sender: "noreply@example.org", recipient, terminal: true, ...extra },
      metadata: { eventSchemaVersion: 1, eventTimestamp: at.toISOString() },
    };
  }
}

/** SES v2 SendEmail over HTTPS: checks the SigV4 signature, answers as SES does. */
export class SesStandIn {
  constructor() {
    this.accepted = [];
    this.calls = 0;
    this.failNext = [];
    this.rejected = new Set();
    this.fetch = this.fetch.bind(this);
  }

  async fetch(input, init = {}) {
    const request = new Request(input, init);
    const url = new URL(request.url);
    this.calls += 1;
    if (request.method !== "POST" || url.pathname !== "/v2/email/outbound-emails") {
      return jsonAnswer(404, { message: "Not Found" }, { "x-amzn-errortype": "NotFoundException" });
    }
    const body = await request.text();
    const authorization = request.headers.get("authorization") ?? "";
    const datetime = request.headers.get("x-amz-date") ?? "";
    const expected = new AwsV4Signer({
      method: "POST",
      url: request.url,
      headers: { "content-type": request.headers.get("content-type") ?? "" },
      body,
      service: "ses",
      datetime,
      ...SES_CREDENTIALS,
    });
    const signed = await expected.sign();
    if (!datetime || authorization !== signed.headers.get("authorization")) {
      return jsonAnswer(403, { message: "The request signature we calculated does not match" }, { "x-amzn-errortype": "SignatureDoesNotMatch" });
    }
    const fault = this.failNext.shift();
    if (fault) return jsonAnswer(fault.status, { message: fault.message ?? fault.type }, { "x-amzn-errortype": fault.type });
    const payload = JSON.parse(body);
    const to = payload.Destination?.ToAddresses ?? [];
    if (to.length !== 1) return jsonAnswer(400, { message: "one destination expected" }, { "x-amzn-errortype": "BadRequestException" });
    const address = /<([^>]+)>$/.exec(to[0])?.[1] ?? to[0];
    if (this.rejected.has(address)) {
      return jsonAnswer(400, { message: "Email address is not verified." }, { "x-amzn-errortype": "MessageRejected" });
    }
    const messageId = `0100019${crypto.randomUUID().replace(/-/g, "").slice(0, 20)}-000000`;
    const tags = Object.fromEntries((payload.EmailTags ?? []).map((t) => [t.Name, t.Value]));
    this.accepted.push({ messageId, address, payload, tags, at: Math.floor(Date.now() / 1000) });
    return jsonAnswer(200, { MessageId: messageId });
  }

  /** The EventBridge event SES publishes for an accepted message. */
  event(accepted, eventType, extra = {}) {
    return {
      version: "0",
      source: "aws.ses",
      "detail-type": `Email ${eventType}`,
      detail: {
        eventType,
        mail: {
          timestamp: new Date(accepted.at * 1000).toISOString(),
          messageId: accepted.messageId,
          destination: [accepted.address],
          tags: Object.fromEntries(Object.entries(accepted.tags).map(([k, v]) => [k, [v]])),
        },
        ...extra,
      },
    };
  }
}

/** SendGrid v3 Mail Send: bearer key, 202 + X-Message-Id, 429 bursts. */
export class SendgridStandIn {
  constructor(apiKey) {
    this.apiKey = apiKey;
    this.accepted = [];
    this.calls = 0;
    this.failNext = [];
    this.fetch = this.fetch.bind(this);
  }

  async fetch(input, init = {}) {
    const request = new Request(input, init);
    const url = new URL(request.url);
    this.calls += 1;
    if (request.method !== "POST" || url.pathname !== "/v3/mail/send") return jsonAnswer(404, { errors: [{ message: "not found" }] });
    if (request.headers.get("authorization") !== `Bearer ${this.apiKey}`) {
      return jsonAnswer(401, { errors: [{ message: "The provided authorization grant is invalid, expired, or revoked" }] });
    }
    const fault = this.failNext.shift();
    if (fault) return jsonAnswer(fault.status, { errors: [{ message: fault.message ?? "fault" }] });
    const payload = await request.json();
    if (!payload.personalizations?.length || !payload.from?.email || !payload.content?.length) {
      return jsonAnswer(400, { errors: [{ message: "Bad Request" }] });
    }
    const messageId = crypto.randomUUID().replace(/-/g, "").slice(0, 22);
    const p = payload.personalizations[0];
    this.accepted.push({ messageId, address: p.to[0].email, payload, tags: p.custom_args, at: Math.floor(Date.now() / 1000) });
    return new Response(null, { status: 202, headers: { "x-message-id": messageId } });
  }

  /** One Event Webhook entry for an accepted message (custom_args at the top level). */
  event(accepted, event, extra = {}) {
    return {
      email: accepted.address,
      timestamp: accepted.at,
      event,
      sg_event_id: crypto.randomUUID(),
      sg_message_id: `${accepted.messageId}.filterdrecv-1234-1-1`,
      ...accepted.tags,
      ...extra,
    };
  }
}

/** A queue binding that records what is sent to it. */
export function recordingQueue() {
  const sent = [];
  return {
    sent,
    async send(body, options = {}) {
      sent.push({ body: structuredClone(body), options });
    },
    async sendBatch(messages) {
      for (const m of messages) sent.push({ body: structuredClone(m.body), options: m });
    },
  };
}

/** Count accepted messages per (job, recipient) across stand-ins. */
export function deliveriesPerRecipient(accepted) {
  const counts = new Map();
  for (const entry of accepted) {
    counts.set(entry.key, (counts.get(entry.key) ?? 0) + 1);
  }
  return counts;
}
