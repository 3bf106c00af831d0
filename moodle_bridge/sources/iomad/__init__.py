"""Talking to a real IOMAD database (IOMAD <= 5.0 and 5.1+ schemas) through SQLAlchemy Core.

Public surface (stable names; see docs/iomad.md):

- schema: IomadGeneration, IomadTables, detect_iomad, build_iomad_tables, IomadSchemaNotFound
- queue: QueuedEmail, select_due_emails, park_emails, restore_emails, mark_emails_sent,
  list_parked, PARKED_DUE_BASE
- headers: parse_headers, ParsedHeaders, HeadersError
- recipients: expand_emails, Expansion, ExpandedRecipient, Problem
- passwords: endecrypt, decode_iomad_temporary, load_temporary_passwords, find_password,
  redact, Secret, PASSWORD_TEMPLATES
- moodle_lock: moodle_cron_lock, LockNotAcquired
- completions: select_completions, CourseCompletion
"""
