"""`zsfs ood-bench` (placeholder until its module lands)."""

COMMANDS: list = []
