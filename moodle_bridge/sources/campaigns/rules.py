"""A campaign rule: who, when, what and how often. Pure: parsing, validation and cycles.

A rule is stored as JSON (``mrcloud_campaigns.rule``) and validated here on every create, so a
rule that cannot run is refused with a message naming the field, never at send time::

    {
      "audience": {"departments": [3], "courses": [7], "cohorts": [2]},   # all optional
      "trigger": {"kind": "inactive_site", "days": 30},
      "suppresstarget": 415,                  # skip users who completed course module 415
      "suppress_course_completion": true,     # skip users who completed the trigger's course
      "template": {"subject": "...", "html": "...", "text": "..."},       # jinja2
      "recipients": "user",                   # user | managers | both
      "cadence": {"every_days": 7, "max_reminders": 3},                  # every_days 0: once
      "start": 1764374400                     # cycles are counted from here (unix seconds)
    }

Triggers (``days`` is N):
- ``inactive_site``: no access to the site for N days (``user.lastaccess``; a user who never
  logged in counts from ``user.timecreated``);
- ``inactive_course``: enrolled in ``course`` and no access to it for N days (``user_lastaccess``);
- ``not_started``: enrolled in ``course`` for N days and not started it (no
  ``course_completions.timestarted``, no access to the course);
- ``not_completed``: enrolled in ``course`` and not completed it, with either ``deadline`` (unix
  seconds; fires from N days before it) or ``licence_expiry`` true (fires from N days before the
  user's IOMAD licence for the course expires).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import jinja2
import jinja2.sandbox

DAY = 86400
TRIGGERS = ("inactive_site", "inactive_course", "not_started", "not_completed")
RECIPIENTS = ("user", "managers", "both")
#: IOMAD's own reminder templates; a campaign never duplicates them (docs/campaigns.md).
IOMAD_REMINDER_TEMPLATES = ("course_not_started_warning", "completion_warn_user", "expiry_warn_user")
MAX_DAYS = 3650
MAX_REMINDERS = 100
MAX_TEMPLATE_CHARS = 200_000


class RuleError(ValueError):
    """The rule cannot run; the message names the field and why."""


@dataclass(frozen=True)
class Trigger:
    kind: str
    days: int
    course: int | None = None
    deadline: int | None = None
    licence_expiry: bool = False


@dataclass(frozen=True)
class Audience:
    departments: tuple[int, ...] = ()
    courses: tuple[int, ...] = ()
    cohorts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Cadence:
    every_days: int = 0
    max_reminders: int = 1


@dataclass(frozen=True)
class CampaignTemplate:
    subject: str
    html: str
    text: str = ""


@dataclass(frozen=True)
class CampaignRule:
    trigger: Trigger
    template: CampaignTemplate
    audience: Audience = field(default_factory=Audience)
    suppresstarget: int | None = None
    suppress_course_completion: bool = False
    recipients: str = "user"
    cadence: Cadence = field(default_factory=Cadence)
    start: int = 0

    def cycle(self, at: int) -> int:
        """The cycle ``at`` falls in: 0 for a one-off campaign, else whole intervals since start."""
        if self.cadence.every_days <= 0:
            return 0
        return max(0, (at - self.start) // (self.cadence.every_days * DAY))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def _int(value: Any, name: str, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{name} must be a whole number")
    if value < low or (high is not None and value > high):
        raise RuleError(f"{name} must be between {low} and {high}" if high else f"{name} must be >= {low}")
    return value


def _ids(value: Any, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RuleError(f"{name} must be a list of ids")
    return tuple(sorted({_int(v, f"{name}[]", low=1) for v in value}))


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RuleError(f"{name} must be an object")
    return value


def _unknown(obj: Mapping[str, Any], allowed: set[str], name: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise RuleError(f"{name}: unknown field(s) {', '.join(extra)}")


def compile_templates(template: CampaignTemplate) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template]:
    """The three parts in jinja2's sandbox with strict undefined (a missing field is an error)."""
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)
    try:
        return (
            env.from_string(template.subject),
            env.from_string(template.html),
            env.from_string(template.text),
        )
    except jinja2.TemplateSyntaxError as exc:
        raise RuleError(f"template: syntax error at line {exc.lineno}: {exc.message}") from None


def parse_rule(document: Mapping[str, Any], *, compile_check: bool = True) -> CampaignRule:
    """Validate a rule document (as stored or given to ``campaigns create``). ``compile_check``
    False leaves out compiling the templates (the costly part), for showing a rule that was
    validated when it was stored; a run or a preview compiles them before it renders."""
    doc = _object(document, "rule")
    _unknown(
        doc,
        {
            "audience",
            "trigger",
            "suppresstarget",
            "suppress_course_completion",
            "template",
            "recipients",
            "cadence",
            "start",
        },
        "rule",
    )
    t = _object(doc.get("trigger"), "trigger")
    _unknown(t, {"kind", "days", "course", "deadline", "licence_expiry"}, "trigger")
    kind = t.get("kind")
    if kind not in TRIGGERS:
        raise RuleError(f"trigger.kind must be one of {', '.join(TRIGGERS)}")
    course = t.get("course")
    if kind != "inactive_site":
        course = _int(course, "trigger.course", low=1)
    elif course is not None:
        raise RuleError("trigger.course is not used by inactive_site")
    deadline = t.get("deadline")
    licence = t.get("licence_expiry", False)
    if not isinstance(licence, bool):
        raise RuleError("trigger.licence_expiry must be true or false")
    if kind == "not_completed":
        if (deadline is None) == (not licence):
            raise RuleError("trigger: not_completed needs either deadline or licence_expiry: true")
        if deadline is not None:
            deadline = _int(deadline, "trigger.deadline", low=1)
    elif deadline is not None or licence:
        raise RuleError("trigger.deadline and trigger.licence_expiry belong to not_completed")
    trigger = Trigger(
        kind, _int(t.get("days"), "trigger.days", low=0, high=MAX_DAYS), course, deadline, licence
    )

    a = _object(doc.get("audience") or {}, "audience")
    _unknown(a, {"departments", "courses", "cohorts"}, "audience")
    audience = Audience(
        _ids(a.get("departments"), "audience.departments"),
        _ids(a.get("courses"), "audience.courses"),
        _ids(a.get("cohorts"), "audience.cohorts"),
    )

    tp = _object(doc.get("template"), "template")
    _unknown(tp, {"subject", "html", "text"}, "template")
    parts = {k: tp.get(k, "") for k in ("subject", "html", "text")}
    for key, value in parts.items():
        if not isinstance(value, str):
            raise RuleError(f"template.{key} must be text")
        if len(value) > MAX_TEMPLATE_CHARS:
            raise RuleError(f"template.{key} is longer than {MAX_TEMPLATE_CHARS} characters")
    if not parts["subject"].strip() or not parts["html"].strip():
        raise RuleError("template needs a subject and an html part")
    template = CampaignTemplate(parts["subject"], parts["html"], parts["text"])
    if compile_check:
        compile_templates(template)

    c = _object(doc.get("cadence") or {}, "cadence")
    _unknown(c, {"every_days", "max_reminders"}, "cadence")
    cadence = Cadence(
        _int(c.get("every_days", 0), "cadence.every_days", low=0, high=MAX_DAYS),
        _int(c.get("max_reminders", 1), "cadence.max_reminders", low=1, high=MAX_REMINDERS),
    )
    if cadence.every_days == 0 and cadence.max_reminders != 1:
        raise RuleError("cadence: a one-off campaign (every_days 0) sends at most one reminder")

    recipients = doc.get("recipients", "user")
    if recipients not in RECIPIENTS:
        raise RuleError(f"recipients must be one of {', '.join(RECIPIENTS)}")
    target = doc.get("suppresstarget")
    suppress_completion = doc.get("suppress_course_completion", False)
    if not isinstance(suppress_completion, bool):
        raise RuleError("suppress_course_completion must be true or false")
    if suppress_completion and trigger.course is None:
        raise RuleError("suppress_course_completion needs a trigger with a course")
    return CampaignRule(
        trigger=trigger,
        template=template,
        audience=audience,
        suppresstarget=None if target is None else _int(target, "suppresstarget", low=1),
        suppress_course_completion=suppress_completion,
        recipients=recipients,
        cadence=cadence,
        start=_int(doc.get("start", 0), "start", low=0),
    )


def rule_from_json(text: str, *, compile_check: bool = True) -> CampaignRule:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuleError(f"rule: invalid JSON at line {exc.lineno}, column {exc.colno}") from None
    return parse_rule(document, compile_check=compile_check)
