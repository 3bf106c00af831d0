"""IOMAD's email templates, per generation: which names exist, and which fan out to managers.

Read from IOMAD's own source for each generation (the files are named in docs/iomad.md):

- **4.3** (``email_template`` still has ``lang``: IOMAD <= 4.3): the 51 names of
  ``local_email::get_templates()`` in ``local/email/local_lib.php`` (IOMAD 4.3.7, build
  20240902). It has ``completion_warn_manager``, ``course_completed_manager``,
  ``expire_manager``, ``expiry_warn_manager`` and no ``expiring_digest_manager`` /
  ``warning_digest_manager``.
- **5** (IOMAD 4.5, 5.0 and 5.1+): the 49 names of ``local_iomad\\email::get_templates()`` in
  ``public/local/iomad/classes/email.php`` (5.1+; the same list as local_email 5.0's).

A row whose template is not in its generation's list is handed back to IOMAD whole
(``unknown_template``), never sent in part. Both generations' ``is_user_template()``
(``local/email/lib/api.php`` 4.3.7, ``public/local/iomad/classes/emailtemplate.php`` 5.x) list
the same 18 string keys: the three microlearning entries there have numeric keys, so
``!empty($list[$name])`` never matches them.
"""

from __future__ import annotations

from moodle_bridge.sources.iomad.schema import IomadGeneration, IomadTables

GENERATION_4_3 = "4.3"
GENERATION_5 = "5"

_COMMON = frozenset(
    {
        "admin_deleted",
        "advertise_classroom_based_course",
        "approval",
        "company_licenseassigned",
        "company_suspended",
        "company_unsuspended",
        "completion_course_supervisor",
        "completion_course_user",
        "completion_digest_manager",
        "completion_expiry_warn_supervisor",
        "completion_warn_supervisor",
        "completion_warn_user",
        "course_classroom_approval",
        "course_classroom_approval_request",
        "course_classroom_approved",
        "course_classroom_denied",
        "course_classroom_manager_denied",
        "course_not_started_warning",
        "expire",
        "expiry_warn_user",
        "invoice_ordercomplete",
        "invoice_ordercomplete_admin",
        "license_allocated",
        "license_reminder",
        "license_removed",
        "licensepoolexpiring",
        "licensepoolwarning",
        "microlearning_nugget_reminder1",
        "microlearning_nugget_reminder2",
        "microlearning_nugget_scheduled",
        "password_update",
        "trainingevent_not_selected",
        "user_added_to_course",
        "user_create",
        "user_deleted",
        "user_programcompleted",
        "user_promoted",
        "user_removed_from_event",
        "user_removed_from_event_teacher",
        "user_removed_from_event_waitlist",
        "user_reset",
        "user_signed_up_for_event",
        "user_signed_up_for_event_reminder",
        "user_signed_up_for_event_teacher",
        "user_signed_up_to_waitlist",
        "user_suspended",
        "user_unsuspended",
    }
)

#: IOMAD 4.3.7 ``local_email::get_templates()`` (local/email/local_lib.php): 51 names.
TEMPLATES_4_3 = _COMMON | {
    "completion_warn_manager",
    "course_completed_manager",
    "expire_manager",
    "expiry_warn_manager",
}
#: IOMAD 5.x ``local_iomad\\email::get_templates()`` (public/local/iomad/classes/email.php): 49 names.
TEMPLATES_5 = _COMMON | {"expiring_digest_manager", "warning_digest_manager"}

#: ``is_user_template()``: the row's user's managers and supervisors get a copy too.
USER_TEMPLATES = frozenset(
    {
        "completion_course_user",
        "course_not_started_warning",
        "completion_warn_user",
        "expiry_warn_user",
        "license_allocated",
        "license_removed",
        "password_update",
        "user_added_to_course",
        "user_create",
        "user_deleted",
        "user_programcompleted",
        "user_promoted",
        "user_removed_from_event",
        "user_reset",
        "user_signed_up_for_event",
        "user_signed_up_to_waitlist",
        "user_suspended",
        "user_unsuspended",
    }
)

#: Every name any generation knows (e.g. for seeding a test site with every template).
ALL_TEMPLATES = TEMPLATES_4_3 | TEMPLATES_5


def template_generation(tables: IomadTables) -> str:
    """``4.3`` while ``email_template`` has its ``lang`` column (IOMAD <= 4.3), else ``5``."""
    if tables.generation is IomadGeneration.LEGACY and tables.template_has_lang:
        return GENERATION_4_3
    return GENERATION_5


def known_templates(tables: IomadTables) -> frozenset[str]:
    return TEMPLATES_4_3 if template_generation(tables) == GENERATION_4_3 else TEMPLATES_5
