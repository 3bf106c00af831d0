// The ManiReports Cloud Offload Worker: HTTPS intake for the bridge, queue consumers, and
// the nonce store. Each route is a thin wrapper over a module that says what it does.

import { isValid } from "./contract.js";
import { INTAKE_PATH, handleIntake, jsonResponse } from "./intake.js";

export { NonceStore } from "./nonce-store.js";

/**
 * Batch processors by message type ("email_batch" -> async (batch, env) => void). The Cloudflare email
 * sender and certificate renderer (Worker parity) register here; until they do, a
 * message is retried and then kept in its queue's dead-letter queue, never dropped.
 */
export const PROCESSORS = new Map();

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === INTAKE_PATH) return handleIntake(request, env);
    return jsonResponse(404, { error: "not_found", message: "no such route" });
  },

  async queue(batch, env) {
    for (const message of batch.messages) {
      const body = message.body;
      const type = body && typeof body === "object" ? body.type : undefined;
      const processor = PROCESSORS.get(type);
      if (!processor || !isValid(type, body)) {
        console.error(
          JSON.stringify({
            event: "queue_message_unprocessable",
            queue: batch.queue,
            message_id: message.id,
            reason: processor ? "contract_violation" : "no_processor",
          }),
        );
        message.retry();
        continue;
      }
      try {
        await processor(body, env);
        message.ack();
      } catch (error) {
        console.error(
          JSON.stringify({ event: "queue_message_failed", queue: batch.queue, message_id: message.id, error: error?.name }),
        );
        message.retry();
      }
    }
  },
};
