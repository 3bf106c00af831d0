"""Versioned, idempotent creation and upgrade of the bridge's own tables.

``bridge_tables.build_bridge_tables`` is the one description of the *current* schema.
Each step below says what changed in its version; step 1 creates the baseline (the current
tables minus everything a later step adds), later steps add columns, indexes or tables
with plain DDL. The version reached is stored in ``mrcloud_config`` as ``schema_version``
(Moodle keeps plugin versions the same way in ``config_plugins``).

Running ``migrate`` twice changes nothing; running it on an older database applies only the
missing steps, each in its own transaction where the engine supports transactional DDL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.schema import CreateColumn

from moodle_bridge.storage import manireports
from moodle_bridge.storage.bridge_tables import BridgeTables, build_bridge_tables
from moodle_bridge.storage.database import now

SCHEMA_VERSION_KEY = "schema_version"


@dataclass(frozen=True)
class Step:
    version: int
    summary: str
    apply: Callable[[sa.Connection, BridgeTables], None]
    #: (table attribute, column name) this step adds to an existing table.
    adds_columns: tuple[tuple[str, str], ...] = ()
    #: table attributes this step creates.
    adds_tables: tuple[str, ...] = ()


def _later_columns(steps: tuple[Step, ...], after: int) -> set[tuple[str, str]]:
    return {col for step in steps if step.version > after for col in step.adds_columns}


def _later_tables(steps: tuple[Step, ...], after: int) -> set[str]:
    return {t for step in steps if step.version > after for t in step.adds_tables}


def _table_attr(tables: BridgeTables) -> dict[str, sa.Table]:
    return {
        name: value
        for name, value in vars(tables).items()
        if isinstance(value, sa.Table)  # dataclass fields that are tables
    }


def baseline_metadata(tables: BridgeTables, steps: tuple[Step, ...] | None = None) -> sa.MetaData:
    """The schema as version 1 created it: the current tables without later additions."""
    steps = STEPS if steps is None else steps
    later_cols = _later_columns(steps, 1)
    later_tabs = _later_tables(steps, 1)
    meta = sa.MetaData()
    for attr, table in _table_attr(tables).items():
        if attr in later_tabs:
            continue
        dropped = {col for (tattr, col) in later_cols if tattr == attr}
        columns = [c._copy() for c in table.columns if c.name not in dropped]
        extras: list[sa.schema.SchemaItem] = []
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint) and constraint.name:
                names = [c.name for c in constraint.columns]
                if not dropped & set(names):
                    extras.append(sa.UniqueConstraint(*names, name=constraint.name))
        for index in table.indexes:
            names = [c.name for c in index.columns]
            if not dropped & set(names):
                extras.append(sa.Index(index.name, *names, unique=index.unique))
        sa.Table(table.name, meta, *columns, *extras)
    return meta


def _create_baseline(conn: sa.Connection, tables: BridgeTables) -> None:
    baseline_metadata(tables).create_all(conn, checkfirst=True)


def _add_columns(*cols: tuple[str, str]) -> Callable[[sa.Connection, BridgeTables], None]:
    def apply(conn: sa.Connection, tables: BridgeTables) -> None:
        by_attr = _table_attr(tables)
        inspector = sa.inspect(conn)
        for attr, name in cols:
            table = by_attr[attr]
            existing = {c["name"] for c in inspector.get_columns(table.name)}
            if name in existing:
                continue  # a half-applied step on an engine without transactional DDL
            ddl = CreateColumn(table.c[name]).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))

    return apply


_JOB_COUNTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("jobs", "recipientsdelivered"),
    ("jobs", "recipientsfellback"),
    ("jobs", "timecancelrequested"),
    ("jobs", "timecancelsignalled"),
)


def _add_indexes(*wanted: tuple[str, str]) -> Callable[[sa.Connection, BridgeTables], None]:
    """Create indexes (table attribute, name without prefix) the table does not have yet."""

    def apply(conn: sa.Connection, tables: BridgeTables) -> None:
        by_attr = _table_attr(tables)
        inspector = sa.inspect(conn)
        for attr, suffix in wanted:
            table = by_attr[attr]
            existing = {ix["name"] for ix in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name and index.name.endswith(suffix) and index.name not in existing:
                    index.create(conn)

    return apply


def _create_tables(*attrs: str) -> Callable[[sa.Connection, BridgeTables], None]:
    def apply(conn: sa.Connection, tables: BridgeTables) -> None:
        by_attr = _table_attr(tables)
        for attr in attrs:
            by_attr[attr].create(conn, checkfirst=True)

    return apply


def _scope_report_ids_by_company(conn: sa.Connection, tables: BridgeTables) -> None:
    """Replace the unique key on result_reports.reportid by one on (companyid, reportid).

    Idempotent: a database created at this version already has the composite key. SQLite cannot
    drop a constraint, so the table is rebuilt there (it holds one small row per report).
    """
    table = tables.result_reports
    inspector = sa.inspect(conn)
    wanted = {"companyid", "reportid"}
    uniques = [
        (u.get("name"), set(u["column_names"])) for u in inspector.get_unique_constraints(table.name)
    ] + [(i.get("name"), set(i["column_names"])) for i in inspector.get_indexes(table.name) if i["unique"]]
    if any(cols == wanted for _, cols in uniques) and not any(cols == {"reportid"} for _, cols in uniques):
        return
    if conn.dialect.name == "sqlite":
        old = f"{table.name}_pre_scope"
        conn.execute(sa.text(f"ALTER TABLE {table.name} RENAME TO {old}"))
        table.create(conn)
        names = ", ".join(c.name for c in table.columns)
        conn.execute(sa.text(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {old}"))
        conn.execute(sa.text(f"DROP TABLE {old}"))
        return
    dropped: set[str] = set()
    for name, cols in uniques:
        if cols == {"reportid"} and name and name not in dropped:
            dropped.add(name)
            if conn.dialect.name == "postgresql":
                in_constraints = any(
                    u.get("name") == name for u in inspector.get_unique_constraints(table.name)
                )
                ddl = (
                    f"ALTER TABLE {table.name} DROP CONSTRAINT {name}"
                    if in_constraints
                    else f"DROP INDEX {name}"
                )
                conn.execute(sa.text(ddl))
            else:
                conn.execute(sa.text(f"ALTER TABLE {table.name} DROP INDEX {name}"))
    constraint = next(c for c in table.constraints if isinstance(c, sa.UniqueConstraint) and c.name)
    if not any(cols == wanted for _, cols in uniques):
        conn.execute(sa.schema.AddConstraint(constraint))


def _schedules(conn: sa.Connection, tables: BridgeTables) -> None:
    """The bridge's schedule tables; and, on a site with ManiReports, the plan's five columns on
    its ``manireports_schedules`` (docs/schedules.md)."""
    _create_tables("schedules", "schedule_runs")(conn, tables)
    manireports.extend(conn, tables.config.name.removesuffix("mrcloud_config"))


STEPS: tuple[Step, ...] = (
    Step(
        1,
        "baseline: config, company settings, jobs, recipients, batches, claims, audit, ...",
        _create_baseline,
    ),
    Step(
        2,
        "outbox batches carry their company and message type",
        _add_columns(("batches", "companyid"), ("batches", "messagetype")),
        adds_columns=(("batches", "companyid"), ("batches", "messagetype")),
    ),
    Step(
        3,
        "outbox leases: batches taken for submission in groups, one commit per group",
        _add_columns(("batches", "leasetoken")),
        adds_columns=(("batches", "leasetoken"),),
    ),
    Step(
        4,
        "claimed rows keep their template's sender display name and Reply-To",
        _add_columns(("claims", "fromname"), ("claims", "replyto")),
        adds_columns=(("claims", "fromname"), ("claims", "replyto")),
    ),
    Step(
        5,
        "re-engagement campaigns and their per-user ledger",
        _create_tables("campaigns", "campaign_ledger"),
        adds_tables=("campaigns", "campaign_ledger"),
    ),
    Step(
        6,
        "dashboard sessions (moodle_bridge.web.auth)",
        _create_tables("dash_sessions"),
        adds_tables=("dash_sessions",),
    ),
    Step(
        7,
        "recipient indexes for the dashboard: by user (department managers), address and name search",
        _add_indexes(
            ("recipients", "mrclreci_jobuse_ix"),
            ("recipients", "mrclreci_jobadd_ix"),
            ("recipients", "mrclreci_jobful_ix"),
        ),
    ),
    Step(
        8,
        "result report ids are unique per company, not across companies",
        _scope_report_ids_by_company,
    ),
    Step(
        9,
        "IOMAD's Resend: claims count the row's send generations and keep the row's modifiedtime at release",
        _add_columns(("claims", "generation"), ("claims", "rowmodified")),
        adds_columns=(("claims", "generation"), ("claims", "rowmodified")),
    ),
    Step(
        10,
        "jobs count delivered and fell-back recipients apart; cancellation reaches the cloud",
        _add_columns(*_JOB_COUNTS_COLUMNS),
        adds_columns=_JOB_COUNTS_COLUMNS,
    ),
    Step(
        11,
        "schedules and their runs (one per slot); the plan's columns on manireports_schedules if present",
        _schedules,
        adds_tables=("schedules", "schedule_runs"),
    ),
    Step(
        12,
        "the ledger of store-only certificates: one per (user, course, completion)",
        _create_tables("completion_certs"),
        adds_tables=("completion_certs",),
    ),
    Step(
        13,
        "certificate schedules: the course whose completions get certificates, and an optional cohort",
        _add_columns(("schedules", "courseid"), ("schedules", "cohortid")),
        adds_columns=(("schedules", "courseid"), ("schedules", "cohortid")),
    ),
    Step(
        14,
        "certificates by recipient: a job's certificates list reads them through an index",
        _add_indexes(("certificates", "mrclcert_rec_ix")),
    ),
)

LATEST_VERSION = STEPS[-1].version


def current_version(conn: sa.Connection, tables: BridgeTables) -> int:
    """0 when the bridge's tables do not exist yet."""
    if not sa.inspect(conn).has_table(tables.config.name):
        return 0
    value = conn.execute(
        sa.select(tables.config.c.value).where(tables.config.c.name == SCHEMA_VERSION_KEY)
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def _set_version(conn: sa.Connection, tables: BridgeTables, version: int) -> None:
    cfg = tables.config
    updated = conn.execute(
        cfg.update().where(cfg.c.name == SCHEMA_VERSION_KEY).values(value=str(version), timemodified=now())
    ).rowcount
    if not updated:
        conn.execute(cfg.insert().values(name=SCHEMA_VERSION_KEY, value=str(version), timemodified=now()))


@dataclass(frozen=True)
class MigrationResult:
    before: int
    after: int
    applied: tuple[Step, ...]


class SchemaTooNew(RuntimeError):
    pass


def migrate(
    engine: sa.Engine,
    prefix: str,
    *,
    target: int | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> MigrationResult:
    """Apply every missing step up to ``target`` (default: the latest)."""
    tables = build_bridge_tables(prefix)
    target = LATEST_VERSION if target is None else target
    with engine.connect() as conn:
        before = current_version(conn, tables)
    if before > LATEST_VERSION:
        raise SchemaTooNew(
            f"the bridge tables are at schema version {before}, newer than this release knows "
            f"({LATEST_VERSION}); upgrade moodle-offload"
        )
    applied: list[Step] = []
    for step in STEPS:
        if step.version <= before or step.version > target:
            continue
        if on_step is not None:
            on_step(step)
        with engine.begin() as conn:
            step.apply(conn, tables)
            _set_version(conn, tables, step.version)
        applied.append(step)
    return MigrationResult(before, max([before, *[s.version for s in applied]]), tuple(applied))
