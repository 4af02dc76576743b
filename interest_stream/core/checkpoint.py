"""The model checkpoint folder, read without torch (numpy and json only).

The one reader of a checkpoint's serving half: ``config.json``, ``items.json``,
``item_vectors.npy``, ``item_meta.json`` and ``metrics.json``. The API, the item
index and the models package all read through it; only the encoder weights
(``model.safetensors``) are loaded elsewhere (``interest_stream.models.model``).
A folder whose ``format_version`` differs from :data:`FORMAT_VERSION` is refused
with :class:`CheckpointError`. The layout is described in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import numpy as np

from interest_stream.core.errors import InterestStreamError

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "ITEMS_FILE",
    "ITEM_META_FILE",
    "ITEM_VECTORS_FILE",
    "METRICS_FILE",
    "VERSIONS_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "ModelError",
    "checkpoint_version",
    "load_item_meta",
    "load_item_vectors",
    "read_config",
    "read_item_ids",
    "read_json",
    "read_metrics",
    "short_window_spec",
    "write_json",
]

FORMAT_VERSION = 1
"""Version of the checkpoint layout; bumped on any incompatible change."""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ITEMS_FILE = "items.json"
ITEM_VECTORS_FILE = "item_vectors.npy"
ITEM_META_FILE = "item_meta.json"
METRICS_FILE = "metrics.json"
VERSIONS_FILE = "versions.json"


class ModelError(InterestStreamError):
    """Something went wrong in the interest encoder, its training or its evaluation.

    Defined here (re-exported by ``interest_stream.models.errors``) so that the
    torch-free checkpoint reader's :class:`CheckpointError` is a ``ModelError``.
    """


class CheckpointError(ModelError):
    """A checkpoint folder is missing a file, is damaged or has another format version.

    Retrain with ``interest-stream train`` (or point ``INTEREST_MODEL_DIR`` at a
    folder written by this version) to fix it.
    """


def read_json(path: Path) -> Any:
    """Read a JSON file.

    Raises:
        CheckpointError: Missing or not valid JSON.
    """
    try:
        with path.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing; is {path.parent} a model checkpoint?") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON: {exc}") from exc


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename), pretty-printed, UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json``.

    Args:
        path: The checkpoint folder.

    Returns:
        The config as a dict (``format_version``, ``model_version``, ``dim``, ...).

    Raises:
        CheckpointError: Not a folder, no config, or another format version.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    cfg = read_json(folder / CONFIG_FILE)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a JSON object")
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: checkpoint format version {version!r}, this code reads version "
            f"{FORMAT_VERSION}; retrain with `interest-stream train` to get a compatible folder"
        )
    for key in ("model_version", "dim", "metric", "n_items"):
        if key not in cfg:
            raise CheckpointError(f"{folder / CONFIG_FILE}: missing key {key!r}")
    if cfg["metric"] != "ip":
        raise CheckpointError(f"{folder}: metric {cfg['metric']!r}, expected 'ip'")
    return cfg


def read_item_ids(path: str | os.PathLike[str]) -> list[str]:
    """The item vocabulary (``items.json``), in row order of the item vectors.

    Raises:
        CheckpointError: Missing, or not a JSON list of strings.
    """
    file = Path(path) / ITEMS_FILE
    items = read_json(file)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise CheckpointError(f"{file}: expected a JSON list of item id strings")
    return list(items)


def load_item_vectors(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Item ids, item vectors and config of a checkpoint, without importing torch.

    Args:
        path: The checkpoint folder.

    Returns:
        ``(item_ids, vectors, config)``: ``item_ids[i]`` is the id of row ``i`` of
        ``vectors`` (float32, C-contiguous, ``[n_items, dim]``); scoring is the
        inner product (``config["metric"] == "ip"``).

    Raises:
        CheckpointError: Missing or inconsistent files, or another format version.
    """
    folder = Path(path)
    cfg = read_config(folder)
    items = read_item_ids(folder)
    try:
        vectors = np.load(folder / ITEM_VECTORS_FILE, allow_pickle=False)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{folder / ITEM_VECTORS_FILE}: missing") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / ITEM_VECTORS_FILE}: unreadable: {exc}") from exc
    dim = int(cfg["dim"])
    if vectors.ndim != 2 or vectors.shape != (len(items), dim):
        raise CheckpointError(
            f"{folder}: item_vectors.npy has shape {vectors.shape}, expected "
            f"({len(items)}, {dim}) from items.json and config.json"
        )
    if len(items) != int(cfg["n_items"]):
        raise CheckpointError(
            f"{folder}: items.json has {len(items)} ids, config.json says {cfg['n_items']}"
        )
    return items, np.ascontiguousarray(vectors, dtype=np.float32), cfg


def load_item_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-item metadata of a checkpoint (``item_meta.json``); empty when absent.

    Returns:
        item id -> ``{"category": ..., "cold": ...}`` (or item id -> category
        string in folders written by ``index.write_item_vectors``).

    Raises:
        CheckpointError: The file is not a JSON object.
    """
    file = Path(path) / ITEM_META_FILE
    if not file.exists():
        return {}
    meta = read_json(file)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    return meta


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's ``metrics.json`` (training curves, timings); empty when absent."""
    file = Path(path) / METRICS_FILE
    if not file.exists():
        return {}
    data = read_json(file)
    return data if isinstance(data, dict) else {}


def checkpoint_version(path: str | os.PathLike[str]) -> str | None:
    """The ``model_version`` in a checkpoint's ``config.json``; ``None`` if unreadable."""
    try:
        version = json.loads((Path(path) / CONFIG_FILE).read_text()).get("model_version")
    except (OSError, ValueError, AttributeError):
        return None
    return None if version is None else str(version)


DEFAULT_SHORT_WINDOW: Final = (50, 30.0)
"""``(events, minutes)`` of the short window of a checkpoint that does not record it."""


def short_window_spec(config: dict[str, Any]) -> tuple[int, float]:
    """The short window a checkpoint was trained with: ``(max events, minutes)``.

    The worker cuts each user's short window with these numbers (not with its own
    settings), so a checkpoint trained with another window is served as it was trained.

    Args:
        config: A checkpoint's ``config.json`` (:func:`read_config`).
    """
    train = config.get("train") or {}
    events = int(train.get("short_window_events", DEFAULT_SHORT_WINDOW[0]))
    minutes = float(train.get("short_window_minutes", DEFAULT_SHORT_WINDOW[1]))
    return events, minutes
