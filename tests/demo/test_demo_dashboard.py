"""`make demo DEMO_ARGS=--dashboard`: a working sign-in link, the demo's jobs on the page, and the
dashboard kept up until interrupted."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/signin\?token=[A-Za-z0-9_.-]+)")


@pytest.mark.slow
def test_demo_prints_a_link_and_keeps_the_dashboard_running(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "demo",
            "--users",
            "20",
            "--no-faults",
            "--dashboard",
            "--output",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in process.stdout or ():
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    links: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (links and "keeps running" in "".join(seen[-3:])):
            try:
                line = lines.get(timeout=5)
            except queue.Empty:
                assert process.poll() is None, "".join(seen)[-3000:]
                continue
            seen.append(line)
            found = LINK.findall(line)  # the demo prints links unwrapped (soft_wrap)
            if found and "Sign in" in line:
                links.append(found[-1])
        output = "".join(seen)
        assert "Demo OK" in output and links, output[-3000:]
        link = links[-1]
        base = link.split("/signin")[0]
        first = httpx.get(link)
        assert first.status_code == 200, first.text[-600:]
        cookie = first.cookies.get("mrcloud_session") or re.search(
            r"mrcloud_session=([^;]+)", first.headers["set-cookie"]
        ).group(1)  # type: ignore[union-attr]
        jobs = httpx.get(f"{base}/", headers={"Cookie": f"mrcloud_session={cookie}"})
        assert jobs.status_code == 200 and "completed" in jobs.text
        # The demo's campaign, with its cycle's job as the engine recorded it.
        campaign = httpx.get(f"{base}/campaigns/1", headers={"Cookie": f"mrcloud_session={cookie}"})
        assert campaign.status_code == 200 and "We miss you" in campaign.text
        assert re.search(r'<a href="/jobs/\d+">#\d+</a> completed', campaign.text), campaign.text[-2000:]
        assert httpx.get(link).status_code == 403  # one use
        time.sleep(2)
        assert process.poll() is None  # still serving
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0
