// The ManiReports Cloud Offload Worker: HTTPS routes for the bridge and the providers, queue
// consumers, and the Durable Object classes. Each route is a thin wrapper over a module that
// says what it does.

import { isValid } from "./contract.js";
import { applyEvents, normaliseCloudflareEvent } from "./events.js";
import { INTAKE_PATH, handleIntake, jsonResponse } from "./intake.js";
import { processResultsMessage, keepForPull } from "./results.js";
import { handleRoute } from "./routes.js";
import { processCertificateBatch } from "./certificates.js";
import { processEmailBatch } from "./sender.js";

export { NonceStore } from "./nonce-store.js";
export { EventIndex, Pacer, PublicRecords, ResultLog, SendLedger } from "./ledger.js";

/** Queue names (wrangler.jsonc) -> what their consumer does with one message body. */
export const QUEUES = Object.freeze({
  EMAIL_BATCHES: "mrco-email-batches",
  CERTIFICATE_BATCHES: "mrco-certificate-batches",
  EMAIL_EVENTS: "mrco-email-events",
  RESULTS: "mrco-results",
  RESULTS_DLQ: "mrco-results-dlq",
});

/**
 * Batch processors by message type ("email_batch" -> async (batch, env, deps) => report). A
 * message without a processor, or one that fails, is retried and then kept in its queue's
 * dead-letter queue, never dropped.
 */
export const PROCESSORS = new Map([
  ["email_batch", processEmailBatch],
  ["certificate_batch", processCertificateBatch],
]);

function log(level, record) {
  console[level](JSON.stringify(record));
}

async function consumeBatches(batch, env, deps) {
  for (const message of batch.messages) {
    const body = message.body;
    const type = body && typeof body === "object" ? body.type : undefined;
    const processor = PROCESSORS.get(type);
    if (!processor || !isValid(type, body)) {
      log("error", {
        event: "queue_message_unprocessable",
        queue: batch.queue,
        message_id: message.id,
        reason: processor ? "contract_violation" : "no_processor",
      });
      message.retry();
      continue;
    }
    try {
      const report = await processor(body, env, deps);
      log("info", { event: "batch_processed", batch_id: body.batch_id, results: report?.results?.length, calls: report?.calls });
      message.ack();
    } catch (error) {
      log("error", { event: "queue_message_failed", queue: batch.queue, message_id: message.id, error: error?.name, detail: error?.message?.slice(0, 200) });
      message.retry();
    }
  }
}

async function consumeEach(batch, handle) {
  for (const message of batch.messages) {
    try {
      await handle(message.body);
      message.ack();
    } catch (error) {
      log("error", { event: "queue_message_failed", queue: batch.queue, message_id: message.id, error: error?.name, detail: error?.message?.slice(0, 200) });
      message.retry();
    }
  }
}

export async function consumeQueue(batch, env, deps = {}) {
  switch (batch.queue) {
    case QUEUES.EMAIL_EVENTS: {
      // The whole delivery is applied together, so the watermark moves only when all of it applied.
      try {
        const counts = await applyEvents(env, batch.messages.map((m) => normaliseCloudflareEvent(m.body)));
        log("info", { event: "provider_events_applied", provider: "cloudflare", ...counts });
        batch.ackAll();
      } catch (error) {
        log("error", { event: "provider_events_failed", provider: "cloudflare", error: error?.name });
        batch.retryAll();
      }
      return;
    }
    case QUEUES.RESULTS:
      return consumeEach(batch, (body) => processResultsMessage(env, body, deps));
    case QUEUES.RESULTS_DLQ:
      // Callbacks that never got through: kept for the bridge to pull.
      return consumeEach(batch, (body) => keepForPull(env, body));
    default:
      return consumeBatches(batch, env, deps);
  }
}

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === INTAKE_PATH) return handleIntake(request, env);
    const answer = await handleRoute(request, env, { processors: PROCESSORS });
    return answer ?? jsonResponse(404, { error: "not_found", message: "no such route" });
  },

  async queue(batch, env) {
    await consumeQueue(batch, env);
  },
};
