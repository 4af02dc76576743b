"""``python -m interest_stream.models train|evaluate|bench-encoder`` (as mounted by the CLI)."""

from interest_stream.models.cli import run

run()
