"""Strict mode (opt-in): a trigger on IOMAD's queue table parks cloud-routed rows as they are inserted.

Without it, a row is IOMAD's from its insert until the bridge's next claim pass (seconds in
service mode); a run of IOMAD's email task that starts in between mails it. With it, the row
is parked in the inserting transaction itself (``due := due + 10**12``, exactly the bridge's
own park, docs/iomad.md), when its company has ``cloudenabled = 1`` and the global switch is
on, so IOMAD's cron never loads it. The claim pass then takes such rows (parked, unsent, no
claim, original due passed) as it takes due ones; a row it decides not to send (left local,
released) it unparks, and so IOMAD sends it as before.

The trigger reads only the bridge's own tables and changes only ``due`` of the new row. It
leaves alone the rows the bridge itself queues for IOMAD to send (``templatename``
``mrcloud_schedule``, docs/schedules.md): those are IOMAD's to send. Per
engine (``moodle-offload migrate --strict`` installs, ``--no-strict`` removes and hands every
parked unclaimed row back):

- MariaDB/MySQL: ``BEFORE INSERT ... FOR EACH ROW SET NEW.due = IF(...)``. Needs the
  ``TRIGGER`` privilege on the table; with binary logging on, also ``SUPER`` or
  ``log_bin_trust_function_creators = 1``.
- PostgreSQL: a plpgsql function and a ``BEFORE INSERT`` trigger. Needs ``CREATE`` on the
  schema and ownership of (or ``TRIGGER`` on) the table. The function is ``SECURITY DEFINER``
  (search path pinned to its schema): it reads the bridge's tables as the bridge's user, since
  Moodle's user, whose session inserts the row, has no grant on them. Removing the trigger
  (``--no-strict``, ``uninstall``) needs the table's owner (Moodle's user) or a superuser.
- MariaDB/MySQL triggers always run with their definer's (the bridge user's) privileges.
- SQLite: ``AFTER INSERT`` trigger updating the new row (SQLite cannot assign ``NEW``).
"""

from __future__ import annotations

import sqlalchemy as sa

from moodle_bridge.sources.iomad.queries import LOCAL_SCHEDULE_TEMPLATE, PARKED_DUE_BASE
from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage.bridge_repo import OFFLOAD_ENABLED_KEY
from moodle_bridge.storage.bridge_tables import build_bridge_tables


def trigger_name(prefix: str) -> str:
    return f"{prefix}mrcloud_strict_park"


def _condition(prefix: str, email_alias: str) -> str:
    t = build_bridge_tables(prefix)
    return (
        f"{email_alias}.sent IS NULL AND {email_alias}.due < {PARKED_DUE_BASE}"
        f" AND COALESCE({email_alias}.templatename, '') <> '{LOCAL_SCHEDULE_TEMPLATE}'"
        f" AND EXISTS (SELECT 1 FROM {t.company_settings.name} s"
        f" WHERE s.companyid = {email_alias}.companyid AND s.cloudenabled = 1)"
        f" AND EXISTS (SELECT 1 FROM {t.config.name} c"
        f" WHERE c.name = '{OFFLOAD_ENABLED_KEY}' AND c.value = '1')"
    )


def strict_mode_installed(conn: sa.Connection, prefix: str) -> bool:
    name = trigger_name(prefix)
    family = conn.dialect.name
    if family in ("mysql", "mariadb"):
        query = (
            "SELECT count(*) FROM information_schema.triggers"
            " WHERE trigger_schema = DATABASE() AND trigger_name = :n"
        )
    elif family == "postgresql":
        query = "SELECT count(*) FROM pg_trigger WHERE tgname = :n"
    else:
        query = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = :n"
    return bool(conn.execute(sa.text(query), {"n": name}).scalar())


def install_strict_mode(engine: sa.Engine, iomad: IomadTables, prefix: str) -> None:
    """Create (or replace) the parking trigger on IOMAD's queue table."""
    name = trigger_name(prefix)
    table = iomad.email.name
    family = engine.dialect.name
    with engine.begin() as conn:
        if family in ("mysql", "mariadb"):
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW SET NEW.due = "
                    f"IF({_condition(prefix, 'NEW')}, NEW.due + {PARKED_DUE_BASE}, NEW.due)"
                )
            )
        elif family == "postgresql":
            # SECURITY DEFINER: the trigger runs in IOMAD's inserting session (Moodle's user), which
            # has no grant on the bridge's tables; the function reads them as its owner, the bridge's
            # user, with the search path pinned to the schema they are in.
            schema = conn.dialect.identifier_preparer.quote_identifier(
                str(conn.execute(sa.text("SELECT current_schema()")).scalar_one())
            )
            conn.execute(
                sa.text(
                    f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                    f"SECURITY DEFINER SET search_path = {schema}, pg_temp AS $fn$ "
                    f"BEGIN IF {_condition(prefix, 'NEW')} THEN NEW.due := NEW.due + {PARKED_DUE_BASE}; "
                    "END IF; RETURN NEW; END $fn$"
                )
            )
            # Installed already: the new function is all it takes (dropping a trigger needs the
            # table's owner, creating one only TRIGGER on it).
            if not strict_mode_installed(conn, prefix):
                conn.execute(
                    sa.text(
                        f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW"
                        f" EXECUTE FUNCTION {name}()"
                    )
                )
        else:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {name} AFTER INSERT ON {table} FOR EACH ROW "
                    f"WHEN {_condition(prefix, 'NEW')} BEGIN "
                    f"UPDATE {table} SET due = due + {PARKED_DUE_BASE} WHERE id = NEW.id; END"
                )
            )


def remove_strict_mode(engine: sa.Engine, iomad: IomadTables, prefix: str) -> int:
    """Drop the trigger and hand every row it parked that no claim holds back to IOMAD.

    Returns how many rows were handed back (their ``due`` is their own again).
    """
    name = trigger_name(prefix)
    table = iomad.email
    claims = build_bridge_tables(prefix).claims
    family = engine.dialect.name
    with engine.begin() as conn:
        if family == "postgresql":
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON {table.name}"))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {name}()"))
        else:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
        unclaimed = ~sa.exists().where(claims.c.emailid == table.c.id)
        result = conn.execute(
            table.update()
            .where(table.c.sent.is_(None), table.c.due >= PARKED_DUE_BASE, unclaimed)
            .values(due=table.c.due - PARKED_DUE_BASE)
        )
        return int(result.rowcount or 0)
