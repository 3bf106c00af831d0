"""Schedules: campaigns and reports fired at a local time in a company's zone (docs/schedules.md)."""
