"""The sign-in token: Python and the Moodle plugin's PHP agree byte for byte on shared vectors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from offload_contract import dashboard_token as tok

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "moodle_plugin" / "local_mrcloud"
VECTORS = json.loads((ROOT / "offload_contract" / "vectors" / "dashboard_token.json").read_text("utf-8"))
PHP = shutil.which("php")
needs_php = pytest.mark.skipif(PHP is None, reason="php-cli is installed by scripts/bootstrap.sh")


def test_python_matches_vectors() -> None:
    secret = VECTORS["shared_secret"]
    assert tok.derive_key(secret).hex() == VECTORS["derived_key_hex"]
    for case in VECTORS["valid"]:
        token = tok.sign(
            secret,
            case["user_id"],
            case["company_id"],
            now=case["now"],
            lifetime=case["lifetime"],
            jti=case["jti"],
        )
        assert token == case["token"]
        signin = tok.verify(secret, token, now=case["now"])
        assert (signin.user_id, signin.company_id, signin.jti) == (
            case["user_id"],
            case["company_id"],
            case["jti"],
        )
    for case in VECTORS["invalid"]:
        with pytest.raises(tok.TokenError) as caught:
            tok.verify(secret, case["token"], now=case["now"])
        assert caught.value.code == case["code"], case["name"]


def test_other_key_and_lifetime_limits() -> None:
    secret = VECTORS["shared_secret"]
    other = "b3RoZXItZGFzaGJvYXJkLWtleS1mb3ItdGVzdHMtb25seS0wMDAwMDA"
    token = tok.sign(secret, 5, 1, now=100)
    with pytest.raises(tok.TokenError, match="bad_signature"):
        tok.verify(other, token, now=100)
    with pytest.raises(ValueError):
        tok.sign(secret, 5, 1, now=100, lifetime=61)
    with pytest.raises(ValueError):
        tok.sign(secret, 0, 1, now=100)
    with pytest.raises(ValueError):
        tok.derive_key("c2hvcnQ")  # fewer than 32 bytes


@needs_php
@pytest.mark.parametrize("path", sorted(PLUGIN.rglob("*.php")), ids=lambda p: str(p.relative_to(PLUGIN)))
def test_php_lint(path: Path) -> None:
    done = subprocess.run([str(PHP), "-l", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _php(code: str, data: Any) -> Any:
    script = (
        "define('MOODLE_INTERNAL', true);"
        f"require {json.dumps(str(PLUGIN / 'classes' / 'token.php'))};"
        "$in = json_decode(stream_get_contents(STDIN), true);" + code
    )
    done = subprocess.run(
        [str(PHP), "-r", script],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@needs_php
def test_php_matches_vectors() -> None:
    out = _php(
        "$o = ['key' => bin2hex(\\local_mrcloud\\token::derive_key($in['shared_secret'])), 'tokens' => [],"
        " 'payloads' => []];"
        "foreach ($in['valid'] as $c) {"
        "  $o['tokens'][] = \\local_mrcloud\\token::sign($in['shared_secret'], $c['user_id'],"
        "    $c['company_id'], $c['now'], $c['lifetime'], $c['jti']);"
        "  $o['payloads'][] = \\local_mrcloud\\token::canonical_payload($c['user_id'], $c['company_id'],"
        "    $c['now'] + $c['lifetime'], $c['jti']);"
        "}"
        "echo json_encode($o);",
        VECTORS,
    )
    assert out["key"] == VECTORS["derived_key_hex"]
    assert out["tokens"] == [c["token"] for c in VECTORS["valid"]]
    assert out["payloads"] == [c["payload_json"] for c in VECTORS["valid"]]


@needs_php
def test_php_random_token_verifies_in_python_and_refuses_bad_input() -> None:
    secret = VECTORS["shared_secret"]
    out = _php(
        "$t = \\local_mrcloud\\token::sign($in['s'], 42, 3, $in['now']);"
        "$errors = [];"
        "foreach ([[$in['s'], 0, 3, 61], ['c2hvcnQ', 42, 3, 60], [$in['s'], 42, 3, 61]] as $bad) {"
        "  try { \\local_mrcloud\\token::sign($bad[0], $bad[1], $bad[2], $in['now'], $bad[3]);"
        "    $errors[] = 'accepted'; }"
        "  catch (\\InvalidArgumentException $e) { $errors[] = 'refused'; }"
        "}"
        "echo json_encode(['token' => $t, 'errors' => $errors,"
        " 'url' => \\local_mrcloud\\token::signin_url('https://x.example/dash/', $t)]);",
        {"s": secret, "now": 1_800_000_000},
    )
    signin = tok.verify(secret, out["token"], now=1_800_000_010)
    assert (signin.user_id, signin.company_id, signin.expires) == (42, 3, 1_800_000_060)
    assert out["errors"] == ["refused", "refused", "refused"]
    assert out["url"].startswith("https://x.example/dash/signin?token=")


def test_clock_skew_is_tolerated_up_to_five_seconds() -> None:
    secret = VECTORS["shared_secret"]
    ahead = tok.sign(secret, 5, 1, now=1_000 + 5)  # Moodle's clock 5 s ahead of the dashboard's
    assert tok.verify(secret, ahead, now=1_000).expires == 1_065
    too_far = tok.sign(secret, 5, 1, now=1_000 + 6)
    with pytest.raises(tok.TokenError, match="too_long"):
        tok.verify(secret, too_far, now=1_000)
