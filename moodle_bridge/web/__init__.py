"""The dashboard (docs/dashboard.md): sign-in through Moodle, jobs, settings, suppressions, audit."""
