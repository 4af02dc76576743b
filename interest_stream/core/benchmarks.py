"""Lazy access to the benchmarks, which live in the repository's ``bench/`` folder.

The installed package holds no benchmark code; the CLI's ``bench`` verbs load it
from a checkout with :func:`load_bench`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from interest_stream.core.errors import ConfigError

__all__ = ["load_bench", "repository_root"]


def repository_root() -> Path | None:
    """The checkout this package runs from (``None`` for an installed wheel)."""
    here = Path(__file__).resolve().parent.parent.parent
    return here if (here / "bench" / "__init__.py").is_file() else None


def load_bench(name: str) -> ModuleType:
    """Import ``bench.<name>`` from the repository checkout.

    Raises:
        ConfigError: Not running from a checkout (benchmarks are not installed).
    """
    root = repository_root()
    if root is None:
        raise ConfigError(
            "benchmarks are not installed with the package; run `interest-stream bench ...` "
            "from a clone of the repository (they live in its bench/ folder)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"bench.{name}")
