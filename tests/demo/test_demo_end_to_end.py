"""`make demo` end to end, small: the README's first command must keep working."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_with_faults(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "demo", "--users", "40", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "Demo OK" in output
    assert "exactly once each" in output
    assert "rows left to IOMAD untouched: yes" in output
    assert len(list((out / "certificates").glob("*.pdf"))) > 0
    # Temporary passwords are in the seeded bodies; none may reach the console or the logs.
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{out / 'moodle.sqlite3'}")
    with engine.connect() as conn:
        bodies = conn.execute(
            sa.text("SELECT body FROM mdl_email WHERE templatename = 'user_create'")
        ).scalars()
        passwords = [
            line.split("password: ", 1)[1].split("<", 1)[0]
            for body in bodies
            for line in body.splitlines()
            if "password: " in line
        ]
    engine.dispose()
    assert passwords
    logs = output + "".join(p.read_text("utf-8", "replace") for p in out.glob("*.log"))
    leaked = [p for p in passwords if p in logs]
    assert not leaked, f"{len(leaked)} temporary passwords appear in the demo's output or logs"
