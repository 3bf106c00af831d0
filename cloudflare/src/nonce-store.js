// Replay protection for the Worker: nonces live in a SQLite-backed Durable Object, one
// object per key id (so one company's traffic never contends with another's).
//
// A Durable Object, not KV: KV is eventually consistent (a replay to another location
// within ~60 s would be accepted) and has no atomic check-and-set. A Durable Object runs
// one request at a time, so the check and the insert below cannot interleave.

import { DurableObject } from "cloudflare:workers";

export class NonceStore extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);" +
        "CREATE INDEX IF NOT EXISTS nonces_expires_at ON nonces (expires_at);",
    );
  }

  /** Record `nonce` until `expiresAt` (unix seconds); false if it is already recorded and live. */
  remember(nonce, expiresAt) {
    const now = Math.floor(Date.now() / 1000);
    this.sql.exec("DELETE FROM nonces WHERE expires_at <= ?", now);
    if (this.sql.exec("SELECT 1 FROM nonces WHERE nonce = ?", nonce).toArray().length > 0) return false;
    this.sql.exec("INSERT INTO nonces (nonce, expires_at) VALUES (?, ?)", nonce, expiresAt);
    return true;
  }

  /** Live nonces held (for operators and tests). */
  size() {
    return this.sql.exec("SELECT COUNT(*) AS n FROM nonces").one().n;
  }
}

/** The Verifier's nonce store interface over the NONCES Durable Object namespace. */
export function durableNonceStore(namespace) {
  return {
    async remember(keyId, nonce, expiresAt) {
      const stub = namespace.get(namespace.idFromName(keyId));
      return stub.remember(nonce, expiresAt);
    },
  };
}
