"""The layers hold: import-linter's contract (pyproject ``[tool.importlinter]``), ruff's
ban of the bare package names, and a Python client free of the server's dependencies.

import-linter cannot see through the editable install (``package-dir``), so it runs on
the installed layout: a tree of links made by ``.ci/typecheck.py``'s ``link_tree``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PYPROJECT = ROOT / "pyproject.toml"


def _typecheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_ci_typecheck", ROOT / ".ci" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with the repository's contract on the package laid out in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [str(VENV_BIN / "lint-imports"), "--no-cache", "--no-logo", str(PYPROJECT)]
    return subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    _typecheck().link_tree(tree)
    return tree


def test_the_repository_keeps_the_layers(tmp_path: Path) -> None:
    out = _lint_imports(_tree(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_core_importing_the_api_breaks_the_contract(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "interest_stream" / "core" / "planted.py").write_text("import interest_stream.api\n")
    out = _lint_imports(tree)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout
    assert "interest_stream.core.planted -> interest_stream.api" in out.stdout


def test_streams_importing_models_breaks_the_contract(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "interest_stream" / "streams" / "planted.py").write_text(
        "from interest_stream.models import errors\n"
    )
    out = _lint_imports(tree)
    assert out.returncode != 0
    assert "interest_stream.streams.planted -> interest_stream.models" in out.stdout


def test_ruff_bans_the_bare_package_names(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text("import streams\n\nprint(streams)\n")
    cmd = [str(VENV_BIN / "ruff"), "check", "--no-cache", "--config", str(PYPROJECT), str(planted)]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "TID251" in out.stdout


def test_the_python_client_imports_no_server_dependency() -> None:
    code = (
        "import sys, interest_stream.client; "
        'print([m for m in ("fastapi", "uvicorn", "torch", "faust") if m in sys.modules])'
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
