"""Re-engagement campaigns: stored rules over Moodle's own tables (read-only), sent through the
cloud with a per-user ledger so nobody gets a reminder twice in one cycle."""
