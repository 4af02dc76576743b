"""RecBole's own virtualenv, built on demand under ``build/peers/recbole-venv`` (git-ignored).

RecBole 1.2.1 needs numpy < 2 and pandas 2.2, the product numpy 2 and pandas 3: they cannot
share a virtualenv. ``requirements.txt`` beside this file pins every package the peer imports
and is installed with ``--no-deps`` (RecBole's own ``ray<=2.6.3`` requirement serves only its
hyper-parameter search, which the harness does not use).

torch: when the main virtualenv already holds the pinned torch (``torch==`` in
requirements.txt), the peer uses *that installation* -- the torch distribution and its binary
CUDA/triton companions are symbolic links under ``build/peers/main-torch`` put on the peer's
``sys.path`` by a ``.pth`` file, *after* the peer's own site-packages, so the peer's numpy and
pandas still win -- instead of downloading the same multi-GB wheels a second time. Otherwise
(``--torch pip``, or another version in the main virtualenv) pip installs the pinned torch.
The build is redone whenever requirements.txt or the torch mode changes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

__all__ = ["REQUIREMENTS", "TorchMode", "ensure_peer_venv", "pinned_torch"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
REQUIREMENTS = HERE / "requirements.txt"
VENV = ROOT / "build" / "peers" / "recbole-venv"
TORCH_LINKS = ROOT / "build" / "peers" / "main-torch"
MARKER = ".interest-stream-peer.json"
TORCH_COMPANIONS = ("torch", "triton", "nvidia-", "cuda-")
"""Distributions shared from the main virtualenv with torch (torch's binary dependencies)."""

TorchMode = Literal["auto", "main", "pip"]
log = logging.getLogger(__name__)


def pinned_torch(requirements: Path = REQUIREMENTS) -> str:
    """The torch version pinned in requirements.txt."""
    for line in requirements.read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if name.strip().lower() == "torch":
            return version.strip()
    raise ValueError(f"{requirements}: no torch== pin")


def _python_in(venv: Path) -> Path:
    return venv / "bin" / "python"


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def _companion_dists() -> list[md.Distribution]:
    dists = []
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "torch" or name.startswith(TORCH_COMPANIONS):
            dists.append(dist)
    return dists


def _link_main_torch(site_packages: Path) -> list[str]:
    """Link this interpreter's torch and its binary companions; return the linked names."""
    if TORCH_LINKS.exists():
        for entry in TORCH_LINKS.iterdir():
            entry.unlink()
    TORCH_LINKS.mkdir(parents=True, exist_ok=True)
    linked: set[str] = set()
    for dist in _companion_dists():
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(t for t in tops if t not in ("..", "__pycache__")):
            target = base / top
            if target.exists() and top not in linked and not top.endswith(".py"):
                (TORCH_LINKS / top).symlink_to(target)
                linked.add(top)
    (site_packages / "zz_interest_stream_main_torch.pth").write_text(f"{TORCH_LINKS}\n")
    return sorted(linked)


def _requirements_without_torch(dest: Path) -> Path:
    lines = [
        line
        for line in REQUIREMENTS.read_text().splitlines()
        if line.split("==")[0].strip().lower() != "torch"
    ]
    dest.write_text("\n".join(lines) + "\n")
    return dest


def _run(cmd: list[str], log_file: Path) -> None:
    log.info("$ %s", " ".join(cmd))
    with log_file.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def _resolve_mode(mode: TorchMode, want: str) -> Literal["main", "pip"]:
    try:
        have: str | None = md.version("torch")
    except md.PackageNotFoundError:
        have = None
    if mode == "main" and have != want:
        raise RuntimeError(f"--torch main: the main virtualenv has torch {have}, the pin is {want}")
    if mode == "auto":
        return "main" if have == want else "pip"
    return mode


def ensure_peer_venv(
    mode: TorchMode = "auto", base_python: str | None = None, venv: Path = VENV
) -> Path:
    """Build the peer virtualenv unless an up-to-date one exists; its python.

    Args:
        mode: ``main`` (share the main virtualenv's torch), ``pip`` (install it), ``auto``.
        base_python: Interpreter to create the virtualenv with (default: the main one's base).
        venv: Where.
    """
    want = pinned_torch()
    resolved = _resolve_mode(mode, want)
    stamp = {
        "requirements_sha256": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(),
        "torch": resolved,
    }
    python = _python_in(venv)
    marker = venv / MARKER
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == stamp:
        return python
    base = base_python or getattr(sys, "_base_executable", None) or sys.executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    log_file = venv.parent / "recbole-venv-build.log"
    log_file.write_text("")
    log.info("building the peer virtualenv %s (torch: %s; log %s)", venv, resolved, log_file)
    _run([base, "-m", "venv", "--clear", str(venv)], log_file)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    if resolved == "main":
        linked = _link_main_torch(_site_packages(python))
        log.info("torch %s shared from the main virtualenv: %s", want, ", ".join(linked))
    else:
        _run([*pip, "install", f"torch=={want}"], log_file)
    reqs = _requirements_without_torch(venv / "requirements-no-torch.txt")
    _run([*pip, "install", "--no-deps", "-r", str(reqs)], log_file)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    smoke = (
        "import numpy, pandas, torch, recbole, recbole.model.sequential_recommender; "
        "print(numpy.__version__, pandas.__version__, torch.__version__, recbole.__version__)"
    )
    out = subprocess.run([str(python), "-c", smoke], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the peer virtualenv does not import RecBole:\n{out.stderr[-3000:]}")
    log.info("peer virtualenv ready: numpy, pandas, torch, recbole = %s", out.stdout.strip())
    marker.write_text(json.dumps(stamp))
    return python
