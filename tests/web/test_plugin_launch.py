"""The Moodle plugin's launch page (``launch.php``) run by php-cli over stand-ins for Moodle and IOMAD.

Moodle itself is not needed: a ``config.php`` next to the copied plugin defines the few Moodle
functions and classes the page calls, and records what it was asked. The IOMAD class lives where
IOMAD 4.x keeps it (``local/iomad/lib/iomad.php``) and is not loaded beforehand, so the page must
load it itself. The token the page redirects with is verified by the dashboard's own Python code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from offload_contract import dashboard_token as tok
from tests.web.test_token import PHP, PLUGIN, VECTORS, needs_php

LANG = PLUGIN / "lang" / "en" / "local_mrcloud.php"

# Moodle's pieces the launch page touches. Every call is written to $GLOBALS['calls'] and the
# script prints them as JSON at exit (redirect() and exceptions end it).
CONFIG_PHP = r"""<?php
define('MOODLE_INTERNAL', true);
define('MATURITY_BETA', 100);
$CFG = new stdClass();
$CFG->dirroot = __DIR__;
$scenario = json_decode(getenv('MRCO_SCENARIO'), true);
$USER = (object) ['id' => $scenario['user']];
$GLOBALS['calls'] = [];
function record(...$call) { $GLOBALS['calls'][] = $call; }
register_shutdown_function(function () { echo json_encode($GLOBALS['calls']); });
class moodle_exception extends Exception {
    public function __construct($code, $module = '') {
        parent::__construct($code);
        record('exception', $code);
    }
}
class require_login_exception extends moodle_exception {}
class required_capability_exception extends moodle_exception {}
function require_login($course = null, $autologin = true) { record('require_login'); }
function isguestuser() { return !empty($GLOBALS['scenario']['guest']); }
function is_siteadmin() { return !empty($GLOBALS['scenario']['admin']); }
class context_system {
    public $level = 'system';
    public static function instance() { return new context_system(); }
}
class moodle_url { public function __construct($url) {} }
class page_stub { public function set_context($c) {} public function set_url($u) {} }
$PAGE = new page_stub();
function get_config($plugin, $name) { return $GLOBALS['scenario']['config'][$name] ?? false; }
function require_capability($cap, $context) {
    record('require_capability', $cap, $context->level);
    if (!in_array($context->level, $GLOBALS['scenario']['allowed'], true)) {
        throw new required_capability_exception('nopermissions');
    }
}
function redirect($url) { record('redirect', (string) $url); exit(0); }
require_once(__DIR__ . '/context_company.php');
// Moodle's class autoloader, for the plugin's own classes (classes/token.php).
spl_autoload_register(function ($class) {
    if (strpos($class, 'local_mrcloud\\') === 0) {
        $path = str_replace('\\', '/', substr($class, strlen('local_mrcloud\\')));
        require_once(__DIR__ . '/local/mrcloud/classes/' . $path . '.php');
    }
});
"""

CONTEXT_COMPANY_PHP = r"""<?php
namespace core\context;
class company {
    public $level;
    public static function instance($id) { $c = new company(); $c->level = 'company ' . $id; return $c; }
}
"""

# IOMAD 4.x keeps its class in local/iomad/lib/iomad.php (5.x autoloads it as local_iomad\iomad).
IOMAD_PHP = r"""<?php
class iomad {
    public static function get_my_companyid($context, $required = true) {
        record('get_my_companyid', $context->level, $required);
        return $GLOBALS['scenario']['company'];
    }
    public static function require_capability($cap, $context) {
        record('iomad_require_capability', $cap, $context->level);
        if (!in_array($context->level, $GLOBALS['scenario']['allowed'], true)) {
            throw new required_capability_exception('nopermissions');
        }
    }
}
"""

URL = "https://mail.example.org/dashboard"


@pytest.fixture
def moodle(tmp_path: Path) -> Path:
    """A directory laid out like a Moodle site: config.php, local/mrcloud, local/iomad/lib."""
    shutil.copytree(PLUGIN, tmp_path / "local" / "mrcloud")
    (tmp_path / "config.php").write_text(CONFIG_PHP, "utf-8")
    (tmp_path / "context_company.php").write_text(CONTEXT_COMPANY_PHP, "utf-8")
    return tmp_path


def _with_iomad(site: Path) -> Path:
    lib = site / "local" / "iomad" / "lib"
    lib.mkdir(parents=True)
    (lib / "iomad.php").write_text(IOMAD_PHP, "utf-8")
    return site


def _launch(site: Path, **scenario: Any) -> list[list[Any]]:
    scenario.setdefault("config", {"dashboardurl": URL, "sharedkey": VECTORS["shared_secret"]})
    done = subprocess.run(
        [str(PHP), str(site / "local" / "mrcloud" / "launch.php")],
        env={"MRCO_SCENARIO": json.dumps(scenario), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        cwd=site,
    )
    # The output is the JSON list of calls; an uncaught exception adds PHP's message before it.
    match = re.search(r"(\[.*\])\s*$", done.stdout, re.S)
    assert match, done.stdout + done.stderr
    return list(json.loads(match.group(1)))


def _token(calls: list[list[Any]]) -> tok.SignIn:
    (url,) = [c[1] for c in calls if c[0] == "redirect"]
    assert url.startswith(f"{URL}/signin?token=")
    token = parse_qs(urlsplit(url).query)["token"][0]
    signin = tok.verify(VECTORS["shared_secret"], token, now=int(time.time()))
    assert 0 < signin.expires - time.time() <= 60
    return signin


@needs_php
def test_company_manager_is_checked_in_the_company_context_and_signed_for_that_company(moodle: Path) -> None:
    site = _with_iomad(moodle)
    calls = _launch(site, user=42, company=3, allowed=["company 3"])
    assert calls[0] == ["require_login"]
    assert ["get_my_companyid", "system", True] in calls  # non-admins: IOMAD asks them to choose
    assert ["iomad_require_capability", "local/mrcloud:view", "company 3"] in calls
    signin = _token(calls)
    assert (signin.user_id, signin.company_id) == (42, 3)


@needs_php
def test_manager_of_another_company_is_refused_and_gets_no_token(moodle: Path) -> None:
    site = _with_iomad(moodle)
    calls = _launch(site, user=42, company=4, allowed=["company 3"])
    assert ["exception", "nopermissions"] in calls
    assert not [c for c in calls if c[0] == "redirect"]


@needs_php
def test_site_admin_without_a_company_gets_company_zero(moodle: Path) -> None:
    site = _with_iomad(moodle)
    calls = _launch(site, user=2, company=0, admin=True, allowed=["system"])
    assert ["get_my_companyid", "system", False] in calls  # an admin is not sent to choose one
    assert ["require_capability", "local/mrcloud:view", "system"] in calls
    signin = _token(calls)
    assert (signin.user_id, signin.company_id) == (2, 0)


@needs_php
def test_without_iomad_the_capability_is_checked_in_the_system_context(moodle: Path) -> None:
    calls = _launch(moodle, user=2, company=0, admin=True, allowed=["system"])
    assert not [c for c in calls if c[0] == "get_my_companyid"]
    assert _token(calls).company_id == 0


@needs_php
def test_guests_and_an_unconfigured_plugin_are_refused(moodle: Path) -> None:
    site = _with_iomad(moodle)
    guest = _launch(site, user=1, company=0, guest=True, allowed=["system"])
    assert ["exception", "Guests cannot open the dashboard"] in guest
    unset = _launch(site, user=2, company=0, admin=True, allowed=["system"], config={"dashboardurl": URL})
    assert ["exception", "notconfigured"] in unset
    short_key = {"dashboardurl": URL, "sharedkey": "c2hvcnQ"}
    bad = _launch(site, user=2, company=0, admin=True, allowed=["system"], config=short_key)
    assert ["exception", "badkey"] in bad
    for calls in (guest, unset, bad):
        assert not [c for c in calls if c[0] == "redirect"]


def test_every_string_the_plugin_uses_is_defined() -> None:
    defined = set(re.findall(r"\$string\['([^']+)'\]", LANG.read_text("utf-8")))
    used: set[str] = set()
    for path in PLUGIN.rglob("*.php"):
        text = path.read_text("utf-8")
        used |= set(re.findall(r"get_string\('([^']+)', 'local_mrcloud'\)", text))
        used |= set(re.findall(r"moodle_exception\('([^']+)', 'local_mrcloud'\)", text))
        used |= set(re.findall(r"'(privacy:metadata:[a-z:_]+)'", text))
        used |= {f"mrcloud:{c}" for c in re.findall(r"'local/mrcloud:([a-z]+)'", text)}
    assert used >= {"pluginname", "dashboard", "notconfigured", "badkey", "mrcloud:view"}
    assert used - defined == set()
