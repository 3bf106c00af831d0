"""All SQL on the bridge's own tables, in one place (IOMAD's SQL is in moodle_bridge.sources.iomad).

Every function takes an open connection, so the caller decides the transaction: the
claim pass writes claims, jobs, recipients and outbox batches in ONE transaction per chunk.
Bulk writes use ``executemany`` in chunks; nothing here issues a statement per recipient.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from moodle_bridge.pipeline.routing import CompanySettings
from moodle_bridge.storage import audit
from moodle_bridge.storage.bridge_tables import BridgeTables
from moodle_bridge.storage.database import now
from moodle_bridge.storage.sqlutil import chunks, update_where_in
from moodle_bridge.storage.statuses import (
    ACTIVE_STATUSES,
    COUNTER_BUCKETS,
    FINAL_STATUSES,
    JOB_CANCEL_STATES,
    JOB_TERMINAL,
    RESENDABLE_STATUSES,
    job_status_for,
)

OFFLOAD_ENABLED_KEY = "offload_enabled"
#: Rows per executemany / IN (...) list: small enough for every engine's parameter limit.
CHUNK = 1000

#: Recipient statuses after which nothing more happens to the recipient unless a person retries
#: it (``failed`` only). A sealed temporary password is deleted by ``clear_final_secrets``.
FINAL_RECIPIENT_STATUSES = tuple(sorted(FINAL_STATUSES))
RESENDABLE = tuple(sorted(RESENDABLE_STATUSES))
#: How long a sealed temporary password is kept for retrying failed third-party copies of its
#: row (they must be redacted with it). After that such a retry is refused with a clear error.
PASSWORD_RETRY_WINDOW_SECONDS = 7 * 86400


def _by_shape(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows without their NULL values, grouped by the columns left.

    ``executemany`` needs one column list per statement; leaving NULL columns out (the
    default) shrinks what the driver escapes and sends for the common row (a recipient with
    no error and no secret) while keeping every statement a multi-row insert.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        compact = {k: v for k, v in row.items() if v is not None}
        groups.setdefault(tuple(sorted(compact)), []).append(compact)
    return list(groups.values())


@dataclass(frozen=True)
class ClaimState:
    state: str  # claimed | released | completed
    generation: int
    rowmodified: int | None
    timereleased: int | None

    def resent(self, row_modifiedtime: int) -> bool:
        """Whether a due row with this finished claim is a new, intended send (IOMAD's Resend).

        - ``completed``: the bridge marked the row sent; only a Resend makes it due again.
        - ``released``: the row went back to IOMAD; it is a Resend only once IOMAD has sent it
          since (its cron rewrites ``modifiedtime``), else it is still IOMAD's to send.
        - ``claimed``: the bridge's own row (parked): never a resend.
        """
        if self.state == "completed":
            return True
        if self.state != "released":
            return False
        if self.rowmodified is not None:
            return row_modifiedtime != self.rowmodified
        return self.timereleased is not None and row_modifiedtime > self.timereleased


@dataclass(frozen=True)
class BatchRow:
    id: int
    jobid: int
    companyid: int
    batchkey: str
    messagetype: str
    attempt: int
    target: str
    recipientcount: int
    tries: int


class BridgeRepo:
    def __init__(self, tables: BridgeTables) -> None:
        self.t = tables

    # -- configuration and the global switch ---------------------------------------------

    def get_config(self, conn: sa.Connection, name: str) -> str | None:
        c = self.t.config.c
        value: str | None = conn.execute(sa.select(c.value).where(c.name == name)).scalar_one_or_none()
        return value

    def set_config(self, conn: sa.Connection, name: str, value: str) -> None:
        cfg = self.t.config
        if not conn.execute(
            cfg.update().where(cfg.c.name == name).values(value=value, timemodified=now())
        ).rowcount:
            conn.execute(cfg.insert().values(name=name, value=value, timemodified=now()))

    def offload_enabled(self, conn: sa.Connection) -> bool:
        return self.get_config(conn, OFFLOAD_ENABLED_KEY) == "1"

    def set_offload_enabled(self, conn: sa.Connection, enabled: bool) -> None:
        self.set_config(conn, OFFLOAD_ENABLED_KEY, "1" if enabled else "0")

    # -- company settings ----------------------------------------------------------------

    @staticmethod
    def _settings(row: sa.Row[Any]) -> CompanySettings:
        return CompanySettings(
            companyid=int(row.companyid),
            cloudenabled=bool(row.cloudenabled),
            provider=str(row.provider),
            allowemail=bool(row.allowemail),
            allowcertificates=bool(row.allowcertificates),
            threshold=int(row.threshold),
            fallbacklocal=bool(row.fallbacklocal),
            sesstenant=row.sesstenant,
            senderaddress=row.senderaddress,
            sendername=row.sendername,
            certtemplate=str(row.certtemplate),
        )

    def all_settings(self, conn: sa.Connection) -> dict[int, CompanySettings]:
        s = self.t.company_settings
        rows = conn.execute(sa.select(s).order_by(s.c.companyid))
        return {int(r.companyid): self._settings(r) for r in rows}

    def get_settings(self, conn: sa.Connection, companyid: int) -> CompanySettings | None:
        s = self.t.company_settings
        row = conn.execute(sa.select(s).where(s.c.companyid == companyid)).first()
        return None if row is None else self._settings(row)

    def save_settings(self, conn: sa.Connection, settings: CompanySettings, actor: str) -> None:
        s = self.t.company_settings
        values = {
            "cloudenabled": int(settings.cloudenabled),
            "provider": settings.provider,
            "allowemail": int(settings.allowemail),
            "allowcertificates": int(settings.allowcertificates),
            "threshold": settings.threshold,
            "fallbacklocal": int(settings.fallbacklocal),
            "sesstenant": settings.sesstenant,
            "senderaddress": settings.senderaddress,
            "sendername": settings.sendername,
            "certtemplate": settings.certtemplate,
            "timemodified": now(),
            "modifiedby": actor[:100],
        }
        if not conn.execute(s.update().where(s.c.companyid == settings.companyid).values(**values)).rowcount:
            conn.execute(s.insert().values(companyid=settings.companyid, timecreated=now(), **values))

    # -- claims ----------------------------------------------------------------------------

    def already_claimed(self, conn: sa.Connection, emailids: Sequence[int]) -> set[int]:
        """Rows the bridge has ever claimed (any state): a released row belongs to IOMAD for good."""
        c = self.t.claims.c
        out: set[int] = set()
        for part in chunks(list(emailids), CHUNK):
            out.update(
                int(r) for r in conn.execute(sa.select(c.emailid).where(c.emailid.in_(part))).scalars()
            )
        return out

    def claim_states(self, conn: sa.Connection, emailids: Sequence[int]) -> dict[int, ClaimState]:
        """emailid -> the bridge's claim of the row (rows never claimed are absent)."""
        c = self.t.claims.c
        out: dict[int, ClaimState] = {}
        for part in chunks(list(emailids), CHUNK):
            for row in conn.execute(
                sa.select(c.emailid, c.state, c.generation, c.rowmodified, c.timereleased).where(
                    c.emailid.in_(part)
                )
            ):
                out[int(row.emailid)] = ClaimState(
                    str(row.state),
                    int(row.generation or 1),
                    None if row.rowmodified is None else int(row.rowmodified),
                    None if row.timereleased is None else int(row.timereleased),
                )
        return out

    def forget_claims(self, conn: sa.Connection, emailids: Sequence[int]) -> None:
        """Drop finished claims of rows IOMAD's Resend made due again (the new claim replaces them)."""
        c = self.t.claims
        for part in chunks(list(emailids), CHUNK):
            conn.execute(c.delete().where(c.c.emailid.in_(part), c.c.state != "claimed"))

    def claim_senders(
        self, conn: sa.Connection, emailids: Sequence[int]
    ) -> dict[int, tuple[str | None, list[str]]]:
        """emailid -> (template sender display name, Reply-To addresses), for rows that have any."""
        c = self.t.claims.c
        out: dict[int, tuple[str | None, list[str]]] = {}
        for part in chunks(list(emailids), CHUNK):
            query = sa.select(c.emailid, c.fromname, c.replyto).where(
                c.emailid.in_(part), sa.or_(c.fromname.is_not(None), c.replyto.is_not(None))
            )
            for emailid, fromname, replyto in conn.execute(query):
                out[int(emailid)] = (fromname or None, [a for a in (replyto or "").split(",") if a])
        return out

    def claim_templates(self, conn: sa.Connection, emailids: Sequence[int]) -> dict[int, str]:
        """emailid -> the IOMAD template name recorded when the row was claimed."""
        c = self.t.claims.c
        out: dict[int, str] = {}
        for part in chunks(list(emailids), CHUNK):
            for emailid, name in conn.execute(
                sa.select(c.emailid, c.templatename).where(c.emailid.in_(part))
            ):
                out[int(emailid)] = str(name or "")
        return out

    def insert_claims(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        for group in _by_shape(rows):
            for part in chunks(group, CHUNK):
                conn.execute(self.t.claims.insert(), part)

    def set_claims_state(
        self, conn: sa.Connection, emailids: Sequence[int], state: str, *, final: bool = False
    ) -> None:
        c = self.t.claims
        values: dict[str, Any] = {"state": state}
        if state == "released":
            values["timereleased"] = now()
        if final:
            values["timefinal"] = now()
        update_where_in(conn, c, c.c.emailid, emailids, values, size=CHUNK)

    def original_dues(self, conn: sa.Connection, emailids: Sequence[int]) -> dict[int, int]:
        c = self.t.claims.c
        out: dict[int, int] = {}
        for part in chunks(list(emailids), CHUNK):
            for emailid, due in conn.execute(sa.select(c.emailid, c.originaldue).where(c.emailid.in_(part))):
                out[int(emailid)] = int(due)
        return out

    # -- jobs ------------------------------------------------------------------------------

    def create_job(self, conn: sa.Connection, **values: Any) -> int:
        t = now()
        values.setdefault("timecreated", t)
        values.setdefault("timemodified", t)
        key = conn.execute(self.t.jobs.insert().values(**values)).inserted_primary_key
        if key is None:  # pragma: no cover - every engine returns the new id
            raise RuntimeError("the database did not return the new job id")
        return int(key[0])

    def update_job(self, conn: sa.Connection, jobid: int, **values: Any) -> None:
        values.setdefault("timemodified", now())
        conn.execute(self.t.jobs.update().where(self.t.jobs.c.id == jobid).values(**values))

    def mark_job_queued(self, conn: sa.Connection, jobid: int, at: int) -> None:
        """pending -> queued when its first batch is accepted (no read needed)."""
        j = self.t.jobs
        conn.execute(
            j.update()
            .where(j.c.id == jobid, j.c.status == "pending")
            .values(status="queued", timesubmitted=at, timemodified=at)
        )

    def job(self, conn: sa.Connection, jobid: int) -> sa.Row[Any] | None:
        return conn.execute(sa.select(self.t.jobs).where(self.t.jobs.c.id == jobid)).first()

    def refresh_job_totals(
        self, conn: sa.Connection, jobids: Iterable[int], actor: str = "cron"
    ) -> list[int]:
        """Recount the job's recipients by status (one grouped query per job); a job none of whose
        recipients is still in flight gets its final status (``statuses.job_status_for``), so a job
        whose recipients all failed at creation or all went back to IOMAD ends too. Returns the
        jobs that ended now."""
        r, j = self.t.recipients.c, self.t.jobs.c
        ended: list[int] = []
        for jobid in sorted(set(jobids)):
            by_status = {
                str(status): int(n)
                for status, n in conn.execute(
                    sa.select(r.status, sa.func.count()).where(r.jobid == jobid).group_by(r.status)
                )
            }
            counts: dict[str, int] = {
                column: sum(by_status.get(s, 0) for s in statuses)
                for column, statuses in COUNTER_BUCKETS.items()
            }
            counts["recipientstotal"] = sum(by_status.values())
            values: dict[str, Any] = dict(counts)
            active = sum(by_status.get(s, 0) for s in ACTIVE_STATUSES)
            job = conn.execute(sa.select(j.status, j.companyid).where(j.id == jobid)).first()
            if job is not None and active == 0 and counts["recipientstotal"] > 0:
                status = job_status_for({**counts, "active": 0}, str(job.status))
                if status != job.status and job.status not in JOB_TERMINAL:
                    values.update(status=status, timecompleted=now())
                    ended.append(jobid)
                    audit.record(
                        conn,
                        self.t,
                        actor=actor,
                        action=audit.JOB_COMPLETED,
                        now=now(),
                        companyid=int(job.companyid),
                        jobid=jobid,
                        detail={"status": status, **counts},
                    )
            self.update_job(conn, jobid, **values)
        return ended

    # -- recipients ------------------------------------------------------------------------

    def insert_recipients(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        for group in _by_shape(rows):
            for part in chunks(group, CHUNK):
                conn.execute(self.t.recipients.insert(), part)

    def batch_recipients(self, conn: sa.Connection, batchid: int) -> list[sa.Row[Any]]:
        r = self.t.recipients
        return list(conn.execute(sa.select(r).where(r.c.batchid == batchid).order_by(r.c.id)))

    def recipients_of_batches(self, conn: sa.Connection, batchids: Sequence[int]) -> list[sa.Row[Any]]:
        """Recipients of several batches at once (the outbox's lease group), by batch then id."""
        r = self.t.recipients.c
        out: list[sa.Row[Any]] = []
        for part in chunks(sorted(set(batchids)), CHUNK):
            out.extend(
                conn.execute(
                    sa.select(
                        r.id,
                        r.jobid,
                        r.batchid,
                        r.emailid,
                        r.role,
                        r.address,
                        r.fullname,
                        r.contentkey,
                        r.data,
                        r.status,
                    )
                    .where(r.batchid.in_(part))
                    .order_by(r.batchid, r.id)
                )
            )
        return out

    def recipients_of_emails(
        self, conn: sa.Connection, jobid: int, emailids: Sequence[int], role: str
    ) -> list[sa.Row[Any]]:
        r = self.t.recipients
        out: list[sa.Row[Any]] = []
        for part in chunks(list(emailids), CHUNK):
            out.extend(
                conn.execute(sa.select(r).where(r.c.jobid == jobid, r.c.emailid.in_(part), r.c.role == role))
            )
        return out

    def record_certificates(
        self, conn: sa.Connection, jobid: int, companyid: int, emailids: Sequence[int]
    ) -> None:
        """One ``mrcloud_certificates`` row per certificate recipient (verification code issued)."""
        r = self.t.recipients.c
        for part in chunks(sorted(set(emailids)), CHUNK):
            self._record_certificates(conn, companyid, sa.and_(r.jobid == jobid, r.emailid.in_(part)))

    def record_job_certificates(self, conn: sa.Connection, jobid: int, companyid: int) -> None:
        """As ``record_certificates``, for every pending recipient of a job not made from IOMAD's
        queue (a certificate schedule's)."""
        self._record_certificates(conn, companyid, self.t.recipients.c.jobid == jobid)

    def _record_certificates(self, conn: sa.Connection, companyid: int, which: Any) -> None:
        r = self.t.recipients.c
        rows: list[dict[str, Any]] = []
        for rid, userid, data in conn.execute(
            sa.select(r.id, r.userid, r.data).where(which, r.status == "pending", r.data.is_not(None))
        ):
            payload = json.loads(data)
            rows.append(
                {
                    "companyid": companyid,
                    "userid": userid,
                    "courseid": payload.get("courseid"),
                    "recipientid": int(rid),
                    "verifycode": payload["certificate"]["verification_code"],
                }
            )
        for certificates in chunks(rows, CHUNK):
            conn.execute(self.t.certificates.insert(), certificates)

    def certified_recipients(
        self, conn: sa.Connection, jobid: int, after_id: int = 0, limit: int = 1000
    ) -> list[sa.Row[Any]]:
        """Recipients of the job whose certificate was stored (``artifactkey`` set), in id order
        after ``after_id``: the pages of a job's certificate ZIP."""
        r = self.t.recipients.c
        return list(
            conn.execute(
                sa.select(r.id, r.address, r.fullname, r.artifactkey)
                .where(r.jobid == jobid, r.artifactkey.is_not(None), r.id > after_id)
                .order_by(r.id)
                .limit(limit)
            )
        )

    def set_recipients_status(
        self,
        conn: sa.Connection,
        recipientids: Sequence[int],
        status: str,
        *,
        errorcode: str | None = None,
        errormessage: str | None = None,
        only_from: Sequence[str] | None = None,
    ) -> int:
        r = self.t.recipients
        values: dict[str, Any] = {"status": status, "timemodified": now()}
        if errorcode is not None:
            values.update(errorcode=errorcode, errormessage=(errormessage or "")[:1000])
        if status in FINAL_RECIPIENT_STATUSES:
            values["timefinal"] = now()
            if status != "failed":  # a failed row may be retried; clear_final_secrets decides
                values["secret"] = None
        guard = [] if only_from is None else [r.c.status.in_(list(only_from))]
        return update_where_in(conn, r, r.c.id, recipientids, values, *guard, size=CHUNK)

    def mark_batch_recipients_queued(self, conn: sa.Connection, batchid: int) -> None:
        r = self.t.recipients
        conn.execute(
            r.update()
            .where(r.c.batchid == batchid, r.c.status == "pending")
            .values(status="queued", attempts=r.c.attempts + 1, timemodified=now())
        )

    def restore_recipients_of_rows(
        self, conn: sa.Connection, jobid: int, emailids: Sequence[int], code: str, message: str
    ) -> None:
        """Recipients of rows given back to IOMAD: ``restored`` with the reason."""
        r = self.t.recipients
        values = {"status": "restored", "errorcode": code, "errormessage": message[:1000], "secret": None}
        update_where_in(
            conn, r, r.c.emailid, emailids, values, r.c.jobid == jobid, r.c.status.in_(("pending", "failed"))
        )

    def clear_final_secrets(self, conn: sa.Connection, at: int | None = None) -> int:
        """Delete sealed temporary passwords no copy can need any more.

        The password sits (encrypted) on the row's own recipient, whose copy is rebuilt from IOMAD's
        row and needs no secret; it is kept only to redact the row's third-party copies (content
        key ``e<id>r``). So it is deleted once the recipient is final and no redacted copy of the
        same row in the job is pending, queued, retrying or failed (a failed copy may be retried),
        and in any case ``PASSWORD_RETRY_WINDOW_SECONDS`` after the recipient was created.
        Two statements per 1,000 rows (MariaDB cannot UPDATE a table it reads in a subquery).
        """
        r = self.t.recipients
        copy = r.alias("copy")
        needed = sa.exists().where(
            copy.c.jobid == r.c.jobid,
            copy.c.emailid == r.c.emailid,
            copy.c.contentkey.like("e%r"),
            copy.c.status.in_(RESENDABLE),
        )
        cutoff = (now() if at is None else at) - PASSWORD_RETRY_WINDOW_SECONDS
        ids = list(
            conn.execute(
                sa.select(r.c.id).where(
                    r.c.secret.is_not(None),
                    r.c.status.in_(FINAL_RECIPIENT_STATUSES),
                    sa.or_(~needed, r.c.timecreated < cutoff),
                )
            ).scalars()
        )
        return update_where_in(conn, r, r.c.id, ids, {"secret": None}, size=CHUNK)

    # -- outbox batches ----------------------------------------------------------------------

    def insert_batches(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Insert outbox rows; returns batchkey -> id (one extra SELECT per chunk)."""
        b = self.t.batches
        ids: dict[str, int] = {}
        for part in chunks(rows, CHUNK):
            conn.execute(b.insert(), part)
            keys = [row["batchkey"] for row in part]
            for key, bid in conn.execute(sa.select(b.c.batchkey, b.c.id).where(b.c.batchkey.in_(keys))):
                ids[str(key)] = int(bid)
        return ids

    def batch_rows(
        self,
        conn: sa.Connection,
        *where: sa.ColumnElement[bool],
        order_by: Sequence[sa.ColumnElement[Any]] = (),
        limit: int,
    ) -> list[BatchRow]:
        """Outbox batches as ``BatchRow`` (the fields submission needs)."""
        b = self.t.batches
        query = sa.select(
            b.c.id,
            b.c.jobid,
            b.c.companyid,
            b.c.batchkey,
            b.c.messagetype,
            b.c.attempt,
            b.c.target,
            b.c.recipientcount,
            b.c.tries,
        )
        rows = conn.execute(query.where(*where).order_by(*order_by).limit(limit))
        return [BatchRow(*row) for row in rows]

    def due_batches(self, conn: sa.Connection, at: int, limit: int) -> list[BatchRow]:
        """Pending batches due now, never those of a job being cancelled (job control)."""
        b, j = self.t.batches, self.t.jobs
        stopped = sa.select(j.c.id).where(j.c.status.in_(sorted(JOB_CANCEL_STATES)))
        return self.batch_rows(
            conn,
            b.c.status == "pending",
            b.c.nexttry <= at,
            b.c.jobid.not_in(stopped),
            order_by=(b.c.nexttry, b.c.id),
            limit=limit,
        )

    def pending_batch_count(self, conn: sa.Connection) -> int:
        b = self.t.batches
        return int(conn.execute(sa.select(sa.func.count()).where(b.c.status == "pending")).scalar_one())

    def mark_batch_submitted(
        self, conn: sa.Connection, batchid: int, queuemessageid: str, nbytes: int
    ) -> bool:
        """pending -> submitted; False if another process got there first."""
        b = self.t.batches
        done = conn.execute(
            b.update()
            .where(b.c.id == batchid, b.c.status == "pending")
            .values(
                status="submitted",
                queuemessageid=queuemessageid[:255],
                bytes=nbytes,
                tries=b.c.tries + 1,
                lasterror=None,
                leasetoken=None,
                timesubmitted=now(),
            )
        ).rowcount
        return bool(done)

    def lease_batches(
        self, conn: sa.Connection, batchids: Sequence[int], at: int, until: int, token: str
    ) -> set[int]:
        """Take due pending batches for submission; returns the ids this submitter now holds.

        The lease moves ``nexttry`` past the time the group may take, so concurrent ticks (or a
        ``jobs retry`` beside a tick) never send the same batch twice, and a submitter that
        dies mid-send leaves its batches to be retried when the lease runs out. Two
        statements per group, whatever its size.
        """
        b = self.t.batches
        ids = list(batchids)
        conn.execute(
            b.update()
            .where(b.c.id.in_(ids), b.c.status == "pending", b.c.nexttry <= at)
            .values(nexttry=until, leasetoken=token)
        )
        return {
            int(i)
            for i in conn.execute(
                sa.select(b.c.id).where(b.c.id.in_(ids), b.c.leasetoken == token, b.c.status == "pending")
            ).scalars()
        }

    def mark_batch_retry(
        self, conn: sa.Connection, batchid: int, error: str, nexttry: int, *, count_try: bool = True
    ) -> None:
        b = self.t.batches
        conn.execute(
            b.update()
            .where(b.c.id == batchid, b.c.status == "pending")
            .values(
                tries=b.c.tries + (1 if count_try else 0),
                nexttry=nexttry,
                lasterror=error[:1000],
                leasetoken=None,
            )
        )

    def split_batch(self, conn: sa.Connection, batch: BatchRow, newkey: str) -> int:
        """Move the second half of a pending batch's recipients to a new pending batch ``newkey``.

        For a batch whose message came out over the queue limit (``jobs retry`` packs by count
        only). Both halves are due at once and released from the lease; returns the new batch id.
        """
        b, r = self.t.batches, self.t.recipients
        ids = [
            int(i)
            for i in conn.execute(sa.select(r.c.id).where(r.c.batchid == batch.id).order_by(r.c.id)).scalars()
        ]
        moved = ids[len(ids) // 2 :]
        newid = self.insert_batches(
            conn,
            [
                {
                    "jobid": batch.jobid,
                    "companyid": batch.companyid,
                    "messagetype": batch.messagetype,
                    "batchkey": newkey,
                    "attempt": batch.attempt,
                    "status": "pending",
                    "target": batch.target,
                    "recipientcount": len(moved),
                    "tries": 0,
                    "nexttry": 0,
                    "timecreated": now(),
                }
            ],
        )[newkey]
        update_where_in(conn, r, r.c.id, moved, {"batchid": newid}, r.c.batchid == batch.id, size=CHUNK)
        conn.execute(
            b.update()
            .where(b.c.id == batch.id, b.c.status == "pending")
            .values(recipientcount=len(ids) - len(moved), nexttry=0, leasetoken=None)
        )
        return newid

    def mark_batch_abandoned(self, conn: sa.Connection, batchid: int, error: str) -> None:
        b = self.t.batches
        conn.execute(
            b.update()
            .where(b.c.id == batchid, b.c.status == "pending")
            .values(status="abandoned", lasterror=error[:1000])
        )
