"""Type-check the one import package, ``interest_stream``, as it installs.

The repository keeps ``streams/``, ``models/`` and ``index/`` at the top level and
installs them as ``interest_stream.streams`` ... (pyproject ``package-dir``). mypy
cannot see through an editable install's import hook, so this script lays the
package out as installed -- a tree of symbolic links under ``build/typecheck`` --
and runs mypy (configured by pyproject.toml) on it. Paths in mypy's messages are
inside that tree; the file they name is the link's target.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {
    "interest_stream": ROOT / "interest_stream",
    "interest_stream/streams": ROOT / "streams",
    "interest_stream/models": ROOT / "models",
    "interest_stream/index": ROOT / "index",
}


def link_tree(out: Path) -> None:
    """Mirror every ``.py`` / ``py.typed`` file of the layout under ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    for target, source in LAYOUT.items():
        for path in source.rglob("*"):
            if path.suffix not in (".py", ".typed") or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(source)
            if target == "interest_stream" and rel.parts[0] in ("streams", "models", "index"):
                continue
            dest = out / target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(path)


def main() -> int:
    out = ROOT / "build" / "typecheck"
    link_tree(out)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    return subprocess.call([*cmd, "-p", "interest_stream"], cwd=out)


if __name__ == "__main__":
    sys.exit(main())
