"""The codebase's shape, checked: one namespace, no benchmarks or test code at run time, sizes.

* every installed package is ``interest_stream`` or below it (pyproject ``packages``);
* no runtime module imports ``bench``, the tests' helpers, or the bare ``streams`` /
  ``models`` / ``index`` names (ruff TID251 checks the last one too);
* no module over 500 lines unless its docstring says why ("Over 500 lines: ...");
* no function over 80 lines.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = [ROOT / "interest_stream", ROOT / "streams", ROOT / "models", ROOT / "index"]
FORBIDDEN_TOP = {"bench", "tests", "helpers", "model_helpers", "pressure", "streams", "models",
                 "index"}  # fmt: skip
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _runtime_files() -> list[Path]:
    return sorted(p for d in RUNTIME for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def test_one_top_level_package() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = conf["packages"]
    assert packages and all(p == "interest_stream" or p.startswith("interest_stream.")
                            for p in packages)  # fmt: skip
    dirs = conf["package-dir"]
    for folder in ("streams", "models", "index"):
        assert dirs[f"interest_stream.{folder}"] == folder


def test_runtime_never_imports_benchmarks_or_test_code() -> None:
    bad: list[str] = []
    for path in _runtime_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_TOP:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_module_over_500_lines_without_a_reason() -> None:
    bad = []
    for path in _runtime_files():
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_MODULE_LINES and "Over 500 lines:" not in doc:
            bad.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not bad, "split by job, or say why at the top:\n" + "\n".join(bad)


def test_no_function_over_80_lines() -> None:
    bad = []
    for path in _runtime_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not bad, "\n".join(bad)


def test_code_refers_to_documents_in_the_repository() -> None:
    """Contracts and designs live in docs/; ../shared/ is only where the data sets are."""
    bad = [
        f"{p.relative_to(ROOT)}: {word}"
        for p in _runtime_files()
        for word in ("shared/DESIGN", "shared/STYLE", "(DESIGN.md)", " DESIGN.md")
        if word in p.read_text()
    ]
    assert not bad, bad


def test_bare_names_are_not_importable_outside_the_repository(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import importlib.util as u, interest_stream.streams.window\n"
        "print([n for n in ('streams', 'models', 'index') if u.find_spec(n) is not None])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
