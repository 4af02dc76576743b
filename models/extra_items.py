"""Items the checkpoint does not know, as encoder input: rows appended to the item table.

:meth:`InterestModel.set_extra_items <interest_stream.models.model.InterestModel.set_extra_items>`
uses :func:`extra_rows`: each extra item gets the encoder index ``n_items + 2 + k`` and its
estimated input embedding (:mod:`interest_stream.core.new_items`) as that row of the item
table, instead of the OOV row. With a revisit channel the encoder's ``revisit_codes`` buffer
is extended by the items' own codes (:func:`~interest_stream.core.new_items.new_item_codes`),
the ones their published vectors carry. Design: docs/DESIGN.md ("Items born after the
checkpoint").
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from interest_stream.core.new_items import ExtraItemInputs, new_item_codes
from interest_stream.models.config import N_SPECIAL_ITEMS
from interest_stream.models.encoder import InterestEncoder
from interest_stream.models.errors import ModelError

__all__ = ["extra_rows", "known_inputs", "update_in_process", "with_extra"]


def extra_rows(
    model: Any, ids: Sequence[str], inputs: Any
) -> tuple[dict[str, int], torch.Tensor | None]:
    """The lookup (vocabulary row per item, extras after the vocabulary) and the extra rows.

    Args:
        model: The :class:`~interest_stream.models.model.InterestModel` (its encoder's
            ``revisit_codes`` buffer is extended or reset; its published item vectors are
            computed first, from the checkpoint's rows only).
        ids: Extra item ids (ids the checkpoint knows are ignored).
        inputs: float ``[len(ids), dim]`` their input embeddings (``item_table`` width).

    Returns:
        ``(lookup, rows)``; ``rows`` is ``None`` without extras.

    Raises:
        ModelError: ``inputs`` has the wrong shape.
    """
    encoder: InterestEncoder = model.encoder
    item_index: Mapping[str, int] = model.item_index
    if model._scores is None:  # noqa: SLF001  (the model's helper: its cache, codes before extras)
        model.item_vectors()
    width = encoder.cfg.dim
    vecs = np.asarray(inputs, dtype=np.float32).reshape(len(ids), -1 if len(ids) else width)
    if vecs.shape[1] != width:
        raise ModelError(f"extra item inputs have {vecs.shape[1]} columns, the table {width}")
    keep = [k for k, i in enumerate(ids) if i not in item_index]
    names = [str(ids[k]) for k in keep]
    lookup = dict(item_index)
    base = encoder.n_items
    lookup.update({item: base + k for k, item in enumerate(names)})
    rd = encoder.cfg.revisit_dim
    if rd:
        codes = encoder.get_buffer("revisit_codes")[: base + N_SPECIAL_ITEMS]
        extra = torch.from_numpy(new_item_codes(names, rd)).to(codes)
        encoder.register_buffer("revisit_codes", torch.cat([codes, extra]))
    if not names:
        return lookup, None
    return lookup, torch.from_numpy(vecs[keep])


def with_extra(table: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The item table with the extra rows appended (``table`` itself without extras)."""
    if rows is None:
        return table
    return torch.cat([table, rows.to(table)])


_IN_PROCESS: weakref.WeakKeyDictionary[Any, ExtraItemInputs] = weakref.WeakKeyDictionary()


def update_in_process(model: Any, ids: Sequence[str], inputs: Any) -> int:
    """Merge new items into an in-process model's extras and apply them; the extras' count."""
    extras = _IN_PROCESS.setdefault(model, ExtraItemInputs())
    extras.merge(ids, inputs)
    extras.apply(model)
    return len(extras)


def known_inputs(model: Any) -> tuple[list[str], np.ndarray]:
    """The checkpoint's items and their input embeddings (the estimator's ``in_vectors``)."""
    with torch.inference_mode():
        table = model.encoder.item_table()[N_SPECIAL_ITEMS:].float().cpu().numpy()
    ids = list(model.item_ids)
    return ids, np.ascontiguousarray(table[: len(ids)], dtype=np.float32)
