"""The checkpoint folder's files (re-exported from :mod:`interest_stream.core.checkpoint`).

A checkpoint written by :func:`interest_stream.models.train` holds ``config.json``
(``format_version``, ``model_version``, ``dim``, ``metric`` = ``"ip"``, the encoder
and training configs, split), ``model.safetensors`` (encoder weights), ``items.json``
(item ids in row order), ``item_vectors.npy`` (float32 ``[n_items, dim]``),
``item_meta.json`` (``category`` / ``cold`` per item), ``metrics.json`` and
``versions.json``. Reading needs numpy and json only (no torch); writing the
whole folder is :func:`interest_stream.models.model.save_checkpoint`.
"""

from __future__ import annotations

from interest_stream.core.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    ITEM_META_FILE,
    ITEM_VECTORS_FILE,
    ITEMS_FILE,
    METRICS_FILE,
    VERSIONS_FILE,
    WEIGHTS_FILE,
    checkpoint_version,
    load_item_meta,
    load_item_vectors,
    read_config,
    read_item_ids,
    read_json,
    read_metrics,
    write_json,
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "ITEMS_FILE",
    "ITEM_META_FILE",
    "ITEM_VECTORS_FILE",
    "METRICS_FILE",
    "VERSIONS_FILE",
    "WEIGHTS_FILE",
    "checkpoint_version",
    "load_item_meta",
    "load_item_vectors",
    "read_config",
    "read_item_ids",
    "read_json",
    "read_metrics",
    "write_json",
]
