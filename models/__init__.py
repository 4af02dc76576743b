"""The interest encoder: short- and long-term user vectors in an item space.

Public names (torch is imported only when a torch-backed name is first used,
so ``from interest_stream.models import load_item_vectors, blend`` stays light):

* :class:`InterestModel` — load a checkpoint, ``encode_short`` / ``encode_long``
  many users at once, ``item_vectors()``;
* :func:`blend` — ``alpha * short + (1 - alpha) * long`` (numpy);
* :func:`load_item_vectors`, :func:`load_item_meta` — checkpoint reading, no torch;
* :class:`TrainConfig`, :class:`EncoderConfig`, :func:`train`, :class:`TrainResult`
  (module :mod:`interest_stream.models.training`);
* :func:`evaluate` (module :mod:`interest_stream.models.evaluation`, the temporal
  protocol) and :func:`evaluate_loo` (:mod:`interest_stream.models.loo_eval`,
  leave-one-out by time);
* :func:`select_device`, :func:`short_window`;
* :class:`ModelError` (root), :class:`CheckpointError`, :class:`DataError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from interest_stream.models.blending import blend
from interest_stream.models.checkpoint import FORMAT_VERSION, load_item_meta, load_item_vectors
from interest_stream.models.config import EncoderConfig, LossKind, TaskKind, TrainConfig
from interest_stream.models.errors import CheckpointError, DataError, ModelError
from interest_stream.models.features import short_window

if TYPE_CHECKING:
    from interest_stream.models.evaluation import evaluate
    from interest_stream.models.loo_eval import evaluate_loo
    from interest_stream.models.model import InterestModel, select_device
    from interest_stream.models.training import TrainResult, train

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "DataError",
    "EncoderConfig",
    "InterestModel",
    "LossKind",
    "ModelError",
    "TaskKind",
    "TrainConfig",
    "TrainResult",
    "blend",
    "evaluate",
    "evaluate_loo",
    "load_item_meta",
    "load_item_vectors",
    "select_device",
    "short_window",
    "train",
]

_LAZY = {
    "InterestModel": "interest_stream.models.model",
    "select_device": "interest_stream.models.model",
    "TrainResult": "interest_stream.models.training",
    "train": "interest_stream.models.training",
    "evaluate": "interest_stream.models.evaluation",
    "evaluate_loo": "interest_stream.models.loo_eval",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'interest_stream.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
