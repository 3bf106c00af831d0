"""Shared helpers for the iomad tests: sample rows, statement counting, small fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from iomad_sim.iomad_schema import create_iomad_schema, metadata_for
from iomad_sim.iomad_seed import SeedResult, SeedSpec, seed_iomad
from moodle_bridge.sources.iomad.schema import IomadGeneration, IomadTables

SAMPLE = json.loads((Path(__file__).parent / "data" / "iomad437_sample.json").read_text(encoding="utf-8"))
NOW = 1_795_361_815 + 100


def sample_email(email_id: int) -> dict[str, Any]:
    return next(r for r in SAMPLE["email"] if r["id"] == email_id)


class StatementCounter:
    def __init__(self) -> None:
        self.count = 0
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.count += 1
        self.statements.append(statement.split("\n", 1)[0][:80])


@contextmanager
def count_statements(engine: sa.Engine) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    sa.event.listen(engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        sa.event.remove(engine, "before_cursor_execute", counter)


def seeded(
    engine: sa.Engine, generation: IomadGeneration = IomadGeneration.LEGACY, **spec: Any
) -> tuple[IomadTables, SeedResult]:
    tables = create_iomad_schema(engine, generation=generation)
    return tables, seed_iomad(engine, tables, SeedSpec(**spec))


def full(tables: IomadTables) -> sa.MetaData:
    return metadata_for(tables)
