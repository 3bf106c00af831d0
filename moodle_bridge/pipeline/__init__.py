"""The pipeline an email takes through the bridge: routing, claiming, jobs, batching, outbox."""
