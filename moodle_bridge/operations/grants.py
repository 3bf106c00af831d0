"""The database grants the bridge needs, and no more, derived from the tables it touches.

* IOMAD and Moodle tables the bridge reads (``IomadTables``, the detected generation): SELECT.
* IOMAD's email queue: SELECT and UPDATE (park, give back, mark sent; ``SELECT ... FOR UPDATE``
  needs UPDATE on both engines).
* Moodle's ``lock_db`` only where Moodle itself locks with it (not MySQL/MariaDB, whose named
  locks and PostgreSQL's advisory locks need no grant): SELECT, INSERT, UPDATE.
* The bridge's own tables: SELECT, INSERT, UPDATE, DELETE, and CREATE, ALTER, INDEX for
  ``migrate``. DROP is left out: ``uninstall`` runs with an administrator's URL.
* ManiReports' ``manireports_schedules``, where the site has it: SELECT, and ALTER on MariaDB/MySQL
  so that ``migrate`` adds the plan's columns (on PostgreSQL only its owner may; see the comment
  printed with the grants).
* Strict mode (``migrate --strict``, opt-in): TRIGGER on IOMAD's email queue, printed only when asked
  for (``strict=True``).

PostgreSQL has no per-table CREATE: the bridge user gets CREATE on the schema and owns the tables
it creates (so ALTER and DROP come with ownership).
"""

from __future__ import annotations

import re

from moodle_bridge.sources.iomad.schema import IomadTables
from moodle_bridge.storage.bridge_tables import BridgeTables

_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_HOST = re.compile(r"^[A-Za-z0-9_.%:-]{1,255}$")

BRIDGE_DML = "SELECT, INSERT, UPDATE, DELETE"
BRIDGE_DDL = "CREATE, ALTER, INDEX"


class GrantError(ValueError):
    pass


def _iomad_privileges(iomad: IomadTables, family: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for table in iomad.metadata.sorted_tables:
        out[table.name] = "SELECT"
    out[iomad.email.name] = "SELECT, UPDATE"
    if family in ("mysql", "postgresql"):
        out.pop(iomad.lock_db.name, None)
    else:
        out[iomad.lock_db.name] = "SELECT, INSERT, UPDATE"
    return out


def grant_statements(
    family: str,
    database: str,
    user: str,
    bridge: BridgeTables,
    iomad: IomadTables | None,
    *,
    host: str = "localhost",
    schema: str = "public",
    manireports: str | None = None,
    strict: bool = False,
) -> list[str]:
    """GRANT statements for ``user`` (MariaDB/MySQL ``user@host``, or a PostgreSQL role)."""
    if not _NAME.match(user) or not _NAME.match(database) or not _NAME.match(schema):
        raise GrantError("user, database and schema names may contain only letters, digits and '_'")
    if not _HOST.match(host):
        raise GrantError("host may contain only letters, digits and . % : - _")
    iomad_privs = _iomad_privileges(iomad, family) if iomad is not None else {}
    own = [t.name for t in bridge.metadata.sorted_tables]
    if family == "mysql":
        who = f"'{user}'@'{host}'"
        lines = [
            f"GRANT {privs} ON `{database}`.`{name}` TO {who};" for name, privs in sorted(iomad_privs.items())
        ]
        lines += [f"GRANT {BRIDGE_DML}, {BRIDGE_DDL} ON `{database}`.`{name}` TO {who};" for name in own]
        if manireports:
            lines.append(f"GRANT SELECT, ALTER ON `{database}`.`{manireports}` TO {who};")
        if strict and iomad is not None:
            lines.append(f"GRANT TRIGGER ON `{database}`.`{iomad.email.name}` TO {who};")
            lines.append(
                "-- strict mode with binary logging on: also SUPER or log_bin_trust_function_creators = 1"
            )
        return lines
    if family == "postgresql":
        lines = [
            f'GRANT CONNECT ON DATABASE "{database}" TO "{user}";',
            f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{user}";',
        ]
        lines += [
            f'GRANT {privs} ON TABLE "{schema}"."{name}" TO "{user}";'
            for name, privs in sorted(iomad_privs.items())
        ]
        if manireports:
            lines.append(f'GRANT SELECT ON TABLE "{schema}"."{manireports}" TO "{user}";')
            lines.append(
                f"-- {manireports}: only its owner may add the plan's columns; run `moodle-offload "
                "migrate` once with the owner's URL, or the bridge reads them as their defaults"
            )
        if strict and iomad is not None:
            lines.append(f'GRANT TRIGGER ON TABLE "{schema}"."{iomad.email.name}" TO "{user}";')
            lines.append(
                "-- strict mode: only the queue table's owner (Moodle's user) may drop the trigger; "
                "run `migrate --no-strict` and `uninstall` with that URL"
            )
        return lines
    raise GrantError(f"grants are for MariaDB/MySQL and PostgreSQL, not {family}")
