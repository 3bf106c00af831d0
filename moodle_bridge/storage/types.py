"""Column types that follow Moodle's conventions on every engine."""

from __future__ import annotations

import sqlalchemy as sa

#: Moodle ids are BIGINT auto-increment. SQLite only auto-increments an INTEGER PRIMARY
#: KEY (the rowid alias), so the type becomes INTEGER there.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Unix seconds, as Moodle stores every time.
UNIXTIME = sa.BigInteger()
#: Moodle's int(1)/int(2) flags.
FLAG = sa.SmallInteger()

MAX_TABLE_NAME = 28  # without the prefix (Moodle's XMLDB limit)
MAX_COLUMN_NAME = 30
