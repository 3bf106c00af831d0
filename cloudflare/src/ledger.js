// Durable Objects that hold the sender's state (SQLite storage, one call at a time, so each
// check-then-write below is atomic without locks):
//
//   SendLedger   one per job (idFromName("job:c<company_id>:<job_id>")): the job's callback, and
//                one claim row per recipient: the exactly-once record (docs/cloudflare.md).
//   EventIndex   provider message id -> (job, recipient), claims waiting for a message id by
//                address (the crash window of providers whose events carry no tags), the
//                suppression list; sharded by address. Instance "watermark" keeps each
//                provider's event watermark.
//   Pacer        one per provider: the shared token bucket.
//   ResultLog    one per company: result batches waiting for the bridge to pull them.
//   PublicRecords  one instance: unsubscribe tokens and certificate verification codes.

import { DurableObject } from "cloudflare:workers";

const now = () => Math.floor(Date.now() / 1000);

export const INPROGRESS = "INPROGRESS";
export const COMPLETED = "COMPLETED";

function rowToClaim(row) {
  if (!row) return null;
  return {
    recipient_id: row.recipient_id,
    state: row.state,
    owner: row.owner,
    lease_until: row.lease_until,
    claimed_at: row.claimed_at,
    provider: row.provider,
    address: row.address,
    result: row.result ? JSON.parse(row.result) : null,
    settled_by: row.settled_by,
  };
}

export class SendLedger extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS job (id INTEGER PRIMARY KEY CHECK (id = 1), job_id TEXT NOT NULL," +
        " company_id INTEGER NOT NULL, callback_url TEXT NOT NULL, key_id TEXT NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS claims (recipient_id TEXT PRIMARY KEY, state TEXT NOT NULL," +
        " owner TEXT NOT NULL, lease_until INTEGER NOT NULL, claimed_at INTEGER NOT NULL," +
        " provider TEXT NOT NULL, address TEXT NOT NULL, result TEXT, settled_by TEXT," +
        " updated_at INTEGER NOT NULL);",
    );
  }

  /** Remember the job's company and callback (the events path needs them). */
  remember(meta) {
    this.sql.exec(
      "INSERT INTO job (id, job_id, company_id, callback_url, key_id) VALUES (1, ?, ?, ?, ?)" +
        " ON CONFLICT (id) DO UPDATE SET callback_url = excluded.callback_url, key_id = excluded.key_id",
      meta.job_id,
      meta.company_id,
      meta.callback_url,
      meta.key_id,
    );
  }

  meta() {
    return this.sql.exec("SELECT job_id, company_id, callback_url, key_id FROM job").toArray()[0] ?? null;
  }

  /** Current claims of `recipientIds` (absent ones are left out). */
  lookup(recipientIds) {
    const out = {};
    for (const id of recipientIds) {
      const row = this.sql.exec("SELECT * FROM claims WHERE recipient_id = ?", id).toArray()[0];
      if (row) out[id] = rowToClaim(row);
    }
    return out;
  }

  /**
   * Claim one recipient right before its provider call. Succeeds when there is no row, or
   * when `takeover` names the dead owner of a stale claim (so a settling event or another
   * consumer that got there first wins). Otherwise answers the row as it is.
   */
  claim(recipientId, { owner, leaseUntil, provider, address, takeover = null, at = null }) {
    const row = this.sql.exec("SELECT * FROM claims WHERE recipient_id = ?", recipientId).toArray()[0];
    const t = at ?? now();
    if (!row) {
      this.sql.exec(
        "INSERT INTO claims (recipient_id, state, owner, lease_until, claimed_at, provider, address, updated_at)" +
          " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        recipientId,
        INPROGRESS,
        owner,
        leaseUntil,
        t,
        provider,
        address,
        t,
      );
      return { claimed: true };
    }
    if (
      takeover &&
      row.state === INPROGRESS &&
      row.owner === takeover.owner &&
      row.lease_until === takeover.lease_until &&
      row.lease_until < t
    ) {
      this.sql.exec(
        "UPDATE claims SET owner = ?, lease_until = ?, claimed_at = ?, provider = ?, address = ?, updated_at = ?" +
          " WHERE recipient_id = ?",
        owner,
        leaseUntil,
        t,
        provider,
        address,
        t,
        recipientId,
      );
      return { claimed: true };
    }
    return { claimed: false, claim: rowToClaim(row) };
  }

  /** Record the final result right after the provider answered; false if the claim was lost. */
  complete(recipientId, owner, result) {
    const t = now();
    const cursor = this.sql.exec(
      "UPDATE claims SET state = ?, result = ?, updated_at = ? WHERE recipient_id = ? AND owner = ? AND state = ?",
      COMPLETED,
      JSON.stringify(result),
      t,
      recipientId,
      owner,
      INPROGRESS,
    );
    return cursor.rowsWritten > 0;
  }

  /** Give a claim back when the provider certainly accepted nothing (a retry). */
  release(recipientId, owner) {
    const cursor = this.sql.exec(
      "DELETE FROM claims WHERE recipient_id = ? AND owner = ? AND state = ?",
      recipientId,
      owner,
      INPROGRESS,
    );
    return cursor.rowsWritten > 0;
  }

  /**
   * A provider event proves the provider accepted this recipient's message. A claim still
   * INPROGRESS (the sender died inside the crash window) is completed as `sent`; one already
   * settled by an event reports its result again (the first report may have been lost).
   * Answers {result, report}: report is true when the caller must publish `result`.
   */
  settle(recipientId, messageId, attempts) {
    const row = this.sql.exec("SELECT * FROM claims WHERE recipient_id = ?", recipientId).toArray()[0];
    if (!row) return { result: null, report: false };
    if (row.state === INPROGRESS) {
      const result = {
        job_id: this.meta()?.job_id,
        recipient_id: recipientId,
        status: "sent",
        attempts: Math.max(1, attempts ?? 1),
        occurred_at: now(),
        provider_message_id: messageId,
      };
      this.sql.exec(
        "UPDATE claims SET state = ?, result = ?, settled_by = 'event', updated_at = ? WHERE recipient_id = ?",
        COMPLETED,
        JSON.stringify(result),
        now(),
        recipientId,
      );
      return { result, report: true };
    }
    const claim = rowToClaim(row);
    return { result: claim.result, report: claim.settled_by === "event" };
  }

  /** Counts by state (operators and tests). */
  counts() {
    return this.sql.exec("SELECT state, COUNT(*) AS n FROM claims GROUP BY state").toArray();
  }
}

/** The shard of the EventIndex that owns `address` (lowercased). */
export async function indexShardName(address, shards = 16) {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(address.trim().toLowerCase())),
  );
  return `idx:${digest[0] % shards}`;
}

export class EventIndex extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS messages (message_id TEXT PRIMARY KEY, job_id TEXT NOT NULL," +
        " recipient_id TEXT NOT NULL, company_id INTEGER NOT NULL, address TEXT NOT NULL, at INTEGER NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS pending (address TEXT NOT NULL, job_id TEXT NOT NULL," +
        " recipient_id TEXT NOT NULL, company_id INTEGER NOT NULL, claimed_at INTEGER NOT NULL," +
        " PRIMARY KEY (job_id, recipient_id));" +
        "CREATE INDEX IF NOT EXISTS pending_address ON pending (address, claimed_at);" +
        "CREATE TABLE IF NOT EXISTS suppressed (address TEXT PRIMARY KEY, reason TEXT NOT NULL, at INTEGER NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS watermarks (provider TEXT PRIMARY KEY, at INTEGER NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS probes (provider TEXT PRIMARY KEY, at INTEGER NOT NULL);",
    );
  }

  /** Before a call whose events will name only the message id and the address. */
  expect(address, ref) {
    this.sql.exec(
      "INSERT OR REPLACE INTO pending (address, job_id, recipient_id, company_id, claimed_at) VALUES (?, ?, ?, ?, ?)",
      address.toLowerCase(),
      ref.job_id,
      ref.recipient_id,
      ref.company_id,
      now(),
    );
  }

  /** After the call: the provider's message id, and the pending entry goes. */
  record(messageId, address, ref) {
    this.sql.exec(
      "INSERT OR REPLACE INTO messages (message_id, job_id, recipient_id, company_id, address, at) VALUES (?, ?, ?, ?, ?, ?)",
      messageId,
      ref.job_id,
      ref.recipient_id,
      ref.company_id,
      address.toLowerCase(),
      now(),
    );
    this.sql.exec("DELETE FROM pending WHERE job_id = ? AND recipient_id = ?", ref.job_id, ref.recipient_id);
  }

  forget(ref) {
    this.sql.exec("DELETE FROM pending WHERE job_id = ? AND recipient_id = ?", ref.job_id, ref.recipient_id);
  }

  /**
   * The recipient an event is about: by message id, else the oldest claim to this address
   * that was waiting for its message id when the event's message was sent (the crash window).
   */
  resolve(messageId, address, eventAt) {
    const known = this.sql
      .exec("SELECT job_id, recipient_id, company_id FROM messages WHERE message_id = ?", messageId)
      .toArray()[0];
    if (known) return { ...known, via: "message_id" };
    if (!address) return null;
    const pending = this.sql
      .exec(
        "SELECT job_id, recipient_id, company_id FROM pending WHERE address = ? AND claimed_at <= ? ORDER BY claimed_at LIMIT 1",
        address.toLowerCase(),
        eventAt,
      )
      .toArray()[0];
    if (!pending) return null;
    this.record(messageId, address, pending);
    return { ...pending, via: "pending" };
  }

  suppress(address, reason) {
    this.sql.exec(
      "INSERT OR REPLACE INTO suppressed (address, reason, at) VALUES (?, ?, ?)",
      address.toLowerCase(),
      reason,
      now(),
    );
  }

  suppression(address) {
    return this.sql.exec("SELECT reason FROM suppressed WHERE address = ?", address.toLowerCase()).toArray()[0]?.reason ?? null;
  }

  /** Move a provider's event watermark forward (never back). */
  advance(provider, at) {
    this.sql.exec(
      "INSERT INTO watermarks (provider, at) VALUES (?, ?) ON CONFLICT (provider) DO UPDATE SET at = MAX(at, excluded.at)",
      provider,
      at,
    );
  }

  /** True (and recorded) when no probe went through `provider` in the last `interval` seconds. */
  probeDue(provider, at, interval) {
    const last = this.sql.exec("SELECT at FROM probes WHERE provider = ?", provider).toArray()[0]?.at ?? 0;
    if (at - last < interval) return false;
    this.sql.exec("INSERT OR REPLACE INTO probes (provider, at) VALUES (?, ?)", provider, at);
    return true;
  }

  watermark(provider) {
    return this.sql.exec("SELECT at FROM watermarks WHERE provider = ?", provider).toArray()[0]?.at ?? 0;
  }
}

/**
 * A token bucket shared by every consumer invocation: `rate` tokens per second, at most
 * `burst` stored. take(n) reserves n tokens and answers how long the caller must wait before
 * using them (0: now); a reservation that would wait longer than `maxWaitMs` is refused
 * ({granted: false}), so a consumer never sleeps for long inside one invocation.
 */
export class Pacer extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS bucket (id INTEGER PRIMARY KEY CHECK (id = 1), tokens REAL, at REAL);");
    const row = this.sql.exec("SELECT tokens, at FROM bucket").toArray()[0];
    this.tokens = row ? row.tokens : null;
    this.at = row ? row.at : null;
  }

  take(n, rate, burst, maxWaitMs, atMs = Date.now()) {
    const t = Math.max(atMs, this.at ?? 0);
    const cap = Math.max(burst, n);
    if (this.tokens === null) {
      this.tokens = cap;
      this.at = t;
    }
    this.tokens = Math.min(cap, this.tokens + ((t - this.at) / 1000) * rate);
    this.at = t;
    const waitMs = this.tokens >= n ? 0 : Math.ceil(((n - this.tokens) / rate) * 1000);
    if (waitMs > maxWaitMs) return { granted: false, waitMs };
    this.tokens -= n;
    this.sql.exec("INSERT OR REPLACE INTO bucket (id, tokens, at) VALUES (1, ?, ?)", this.tokens, this.at);
    return { granted: true, waitMs };
  }
}

/** Result batches kept for the bridge to pull (results mode "pull", or callbacks that never got through). */
export class ResultLog extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, report_id TEXT NOT NULL UNIQUE," +
        " body TEXT NOT NULL, created_at INTEGER NOT NULL);",
    );
  }

  /** Keep one encoded result_batch; the same report_id twice is kept once. */
  append(reportId, body) {
    this.sql.exec(
      "INSERT OR IGNORE INTO entries (report_id, body, created_at) VALUES (?, ?, ?)",
      reportId,
      body,
      now(),
    );
  }

  /** Drop what the bridge has committed (seq <= ackThrough), then answer up to `max` more. */
  pull(ackThrough, max) {
    if (Number.isSafeInteger(ackThrough) && ackThrough > 0) {
      this.sql.exec("DELETE FROM entries WHERE seq <= ?", ackThrough);
    }
    const rows = this.sql.exec("SELECT seq, body FROM entries ORDER BY seq LIMIT ?", max).toArray();
    const pending = this.sql.exec("SELECT COUNT(*) AS n FROM entries").one().n;
    return { entries: rows.map((r) => ({ seq: r.seq, body: r.body })), pending };
  }
}

export class PublicRecords extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS unsubscribes (token TEXT PRIMARY KEY, at INTEGER NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS certificates (code TEXT PRIMARY KEY, learner_name TEXT NOT NULL," +
        " course_name TEXT NOT NULL, completed_at INTEGER NOT NULL);",
    );
    // Verification codes of the certificates this Worker rendered, with their company (a code
    // is never taken over by another company) and where the PDF is.
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS certificate_codes (code TEXT PRIMARY KEY, company_id INTEGER NOT NULL," +
        " job_id TEXT NOT NULL, recipient_id TEXT NOT NULL, key TEXT NOT NULL, learner_name TEXT NOT NULL," +
        " course_name TEXT NOT NULL, completed_at INTEGER NOT NULL, issuer_name TEXT, language TEXT);",
    );
    // Revocations by the bridge (POST /v1/certificates/revoke): the record stays, as on AWS.
    this.sql.exec(
      "CREATE TABLE IF NOT EXISTS certificate_revocations (code TEXT PRIMARY KEY, company_id INTEGER NOT NULL," +
        " revoked_at INTEGER NOT NULL, reason TEXT NOT NULL);",
    );
  }

  unsubscribe(token) {
    this.sql.exec("INSERT OR IGNORE INTO unsubscribes (token, at) VALUES (?, ?)", token, now());
  }

  unsubscribed(token) {
    return this.sql.exec("SELECT at FROM unsubscribes WHERE token = ?", token).toArray()[0]?.at ?? null;
  }

  /**
   * Record a certificate's verification code (kept for good, as on AWS). False, and nothing
   * written, when another company's certificate holds the code.
   */
  putCertificate(code, record) {
    const holder = this.sql.exec("SELECT company_id FROM certificate_codes WHERE code = ?", code).toArray()[0];
    if (holder && holder.company_id !== record.company_id) return false;
    this.sql.exec(
      "INSERT OR REPLACE INTO certificate_codes (code, company_id, job_id, recipient_id, key, learner_name," +
        " course_name, completed_at, issuer_name, language) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      code,
      record.company_id,
      record.job_id,
      record.recipient_id,
      record.key,
      record.learner_name,
      record.course_name,
      record.completed_at,
      record.issuer_name ?? null,
      record.language ?? null,
    );
    return true;
  }

  certificate(code) {
    return (
      this.sql
        .exec(
          "SELECT c.*, r.revoked_at AS revoked_at FROM certificate_codes c" +
            " LEFT JOIN certificate_revocations r ON r.code = c.code WHERE c.code = ?",
          code,
        )
        .toArray()[0] ?? null
    );
  }

  /**
   * Revoke (`reason` given) or reinstate (`reason` null) a company's certificate. False, and
   * nothing written, when no certificate with this code belongs to `companyId`.
   */
  setRevoked(code, companyId, reason) {
    const holder = this.sql.exec("SELECT company_id FROM certificate_codes WHERE code = ?", code).toArray()[0];
    if (!holder || holder.company_id !== companyId) return false;
    if (reason === null) {
      this.sql.exec("DELETE FROM certificate_revocations WHERE code = ?", code);
    } else {
      this.sql.exec(
        "INSERT OR REPLACE INTO certificate_revocations (code, company_id, revoked_at, reason) VALUES (?, ?, ?, ?)",
        code,
        companyId,
        now(),
        reason,
      );
    }
    return true;
  }
}
