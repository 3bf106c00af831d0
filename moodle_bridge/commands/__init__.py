"""CLI sub-commands of ``moodle-offload``. Each module defines ``register(subparsers)``,
which adds its parser and sets ``handler`` (a callable taking the parsed args and the
loaded config, returning an exit code)."""
