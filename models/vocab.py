"""The training vocabulary: item rows, categories, item text, and cold-start vectors.

Rows are the items of the training period by descending popularity (ties by id),
then cold items known only from their text. :func:`new_encoder` builds a seeded
encoder for a vocabulary; :func:`cold_start` gives cold items id embeddings
regressed from their text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from interest_stream.models.config import N_SPECIAL_ITEMS, TrainConfig
from interest_stream.models.encoder import InterestEncoder

__all__ = ["RIDGE_LAMBDA", "Vocab", "build_vocab", "cold_start", "new_encoder"]

log = logging.getLogger(__name__)

RIDGE_LAMBDA = 1.0
"""Ridge penalty of the text -> id-embedding regression for cold items."""


@dataclass
class Vocab:
    """The item vocabulary of one training run.

    Attributes:
        item_ids: Item id of each row (warm items first, then cold ones).
        item_index: Item id -> row.
        n_warm: Number of items seen in training (rows ``[0, n_warm)``).
        item_cat: int64 ``[n_items]`` category id per row (0 = unknown).
        categories: Category names (category id ``k + 1`` is ``categories[k]``).
        item_category: Item id -> category name, where known.
        text_emb: float32 ``[n_items, 384]`` MiniLM text embeddings, or ``None``.
        has_text: bool ``[n_items]``: the row has item text.
    """

    item_ids: list[str]
    item_index: dict[str, int]
    n_warm: int
    item_cat: np.ndarray
    categories: list[str]
    item_category: dict[str, str]
    text_emb: np.ndarray | None
    has_text: np.ndarray


def _item_categories(train_df: pd.DataFrame, item_text: pd.DataFrame | None) -> dict[str, str]:
    """Each item's most frequent category in training, else its category in the text table."""
    item_category: dict[str, str] = {}
    if "category" in train_df.columns:
        cats = train_df[["item_id", "category"]].astype(str)
        cats = cats[cats["category"].str.len() > 0]
        sizes = cats.groupby(["item_id", "category"], sort=False).size().reset_index(name="n")
        sizes = sizes.sort_values(
            ["item_id", "n", "category"], ascending=[True, False, True], kind="stable"
        ).drop_duplicates("item_id")
        item_category = dict(
            zip(sizes["item_id"].astype(str), sizes["category"].astype(str), strict=True)
        )
    if item_text is not None and "category" in item_text.columns:
        for i, c in zip(item_text["item_id"], item_text["category"], strict=True):
            item_category.setdefault(str(i), str(c))
    return item_category


def build_vocab(train_df: pd.DataFrame, item_text: pd.DataFrame | None, progress: bool) -> Vocab:
    """The vocabulary of the training events (+ the cold items of ``item_text``).

    Args:
        train_df: Canonical events of the training period.
        item_text: Optional ``item_id, text[, category]`` table; its items get
            MiniLM embeddings (computed here).
        progress: Show a progress bar while embedding text.
    """
    counts = train_df["item_id"].astype(str).value_counts()
    order = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    warm = [k for k, _ in order]
    cold: list[str] = []
    text_map: dict[str, str] = {}
    if item_text is not None:
        text_map = dict(
            zip(item_text["item_id"].astype(str), item_text["text"].astype(str), strict=True)
        )
        warm_set = set(warm)
        cold = sorted((i for i in text_map if i not in warm_set), key=lambda s: (len(s), s))
    item_ids = warm + cold
    item_index = {item: i for i, item in enumerate(item_ids)}
    item_category = _item_categories(train_df, item_text)
    categories = sorted(set(item_category.values()))
    cat_index = {c: i + 1 for i, c in enumerate(categories)}
    item_cat = np.array(
        [cat_index.get(item_category.get(i, ""), 0) for i in item_ids], dtype=np.int64
    )

    text_emb: np.ndarray | None = None
    has_text = np.zeros(len(item_ids), dtype=bool)
    if text_map:
        from interest_stream.models.text import TEXT_DIM, embed_texts

        has_text = np.array([i in text_map for i in item_ids], dtype=bool)
        rows = np.flatnonzero(has_text)
        text_emb = np.zeros((len(item_ids), TEXT_DIM), dtype=np.float32)
        text_emb[rows] = embed_texts([text_map[item_ids[r]] for r in rows], progress=progress)
    return Vocab(
        item_ids=item_ids,
        item_index=item_index,
        n_warm=len(warm),
        item_cat=item_cat,
        categories=categories,
        item_category=item_category,
        text_emb=text_emb,
        has_text=has_text,
    )


def new_encoder(cfg: TrainConfig, vocab: Vocab, device: torch.device) -> InterestEncoder:
    """A freshly initialised encoder (seeded with ``cfg.seed``) with the vocabulary's
    category and text buffers filled in, on ``device``."""
    torch.manual_seed(cfg.seed)
    text_dim = 0 if vocab.text_emb is None else vocab.text_emb.shape[1]
    enc = InterestEncoder(
        cfg.encoder,
        n_items=len(vocab.item_ids),
        n_categories=len(vocab.categories),
        text_dim=text_dim,
    )
    item_cat = enc.get_buffer("item_cat")
    item_cat[N_SPECIAL_ITEMS:] = torch.from_numpy(vocab.item_cat)
    if vocab.text_emb is not None:
        item_text = enc.get_buffer("item_text")
        item_text[N_SPECIAL_ITEMS:] = torch.from_numpy(vocab.text_emb)
    return enc.to(device)


def cold_start(enc: InterestEncoder, vocab: Vocab) -> dict[str, Any]:
    """Give cold items (text only) id embeddings regressed from their text, in place.

    A ridge regression (:data:`RIDGE_LAMBDA`) from text embedding ``[384]`` to the
    learned id embedding ``[dim]``, fit on the trained items that have text.

    Returns:
        A summary for ``metrics.json`` (``cold_items``, ``ridge_train_r2``, ...).
    """
    n_cold = len(vocab.item_ids) - vocab.n_warm
    if n_cold == 0 or vocab.text_emb is None:
        return {"cold_items": 0}
    warm_rows = np.flatnonzero(vocab.has_text[: vocab.n_warm])
    if len(warm_rows) < 10:
        log.warning(
            "only %d trained items have text; cold items keep text+category vectors", len(warm_rows)
        )
        return {"cold_items": n_cold, "ridge_fit_items": len(warm_rows)}
    x = vocab.text_emb[warm_rows].astype(np.float64)
    with torch.no_grad():
        w_all = enc.item_emb.weight.detach().cpu().numpy().astype(np.float64)
    y = w_all[warm_rows + N_SPECIAL_ITEMS]
    gram = x.T @ x + RIDGE_LAMBDA * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, x.T @ y)  # [384, dim]
    cold_rows = np.arange(vocab.n_warm, len(vocab.item_ids))
    pred = vocab.text_emb[cold_rows].astype(np.float64) @ coef
    with torch.no_grad():
        enc.item_emb.weight[torch.from_numpy(cold_rows + N_SPECIAL_ITEMS)] = torch.from_numpy(
            pred.astype(np.float32)
        ).to(enc.item_emb.weight.device)
    resid = y - x @ coef
    r2 = 1.0 - float((resid**2).sum() / max(((y - y.mean(0)) ** 2).sum(), 1e-12))
    return {
        "cold_items": n_cold,
        "ridge_fit_items": len(warm_rows),
        "ridge_lambda": RIDGE_LAMBDA,
        "ridge_train_r2": r2,
    }
