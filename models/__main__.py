"""``python -m models train|evaluate|bench-encoder`` (the same commands the main CLI mounts)."""

from models.cli import run

run()
