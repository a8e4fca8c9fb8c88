"""CLI commands (stub: to be filled)."""

COMMANDS: list = []
