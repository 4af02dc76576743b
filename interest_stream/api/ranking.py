"""``/recommendations``' two-stage ranking: the vectors' candidates re-scored by the re-ranker.

The features and the scorer are :mod:`interest_stream.core.rerank`'s, the ones training and
evaluation use; the inputs come from the user's record (short and long vectors, ``recent``
events) and the checkpoint (item vectors, item statistics, re-ranker weights), which the item
index loads together (:attr:`~interest_stream.index.item_index.ItemIndex.reranker`).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from interest_stream.core.records import Ranking, UserRecord
from interest_stream.core.rerank import RankedItems
from interest_stream.core.vectors import blend
from interest_stream.index.item_index import ItemIndex

__all__ = ["choose_ranking", "rerank", "rerank_candidates", "rerank_query", "rerank_top"]


def choose_ranking(items: ItemIndex, rank: Ranking | None, rec: UserRecord) -> Ranking:
    """The ranking a request gets.

    ``rank=vector`` always gets the vector ranking; otherwise (default or ``rerank``) the
    re-ranker is used when the loaded checkpoint has one and the user's record carries its
    ``recent`` events (records without them, from older workers, get the vector ranking).
    """
    if rank == "vector" or items.reranker is None or not rec.recent:
        return "vector"
    return "rerank"


def rerank(
    items: ItemIndex, rec: UserRecord, weight: float, k: int, exclude: Collection[str]
) -> RankedItems:
    """The user's ``k`` best items by the checkpoint's re-ranker, best first.

    Args:
        items: The item index (with a re-ranker).
        rec: The user's record (vectors and ``recent`` events).
        weight: The short vector's weight in the blend (the checkpoint's alpha).
        k: Items to return.
        exclude: Item ids never returned.

    Returns:
        Items, scores and the features they were scored on (``Reranker.contributions`` of
        the features gives each score's per-feature terms); an item can be one of the
        user's recent items that the catalogue has no vector for.
    """
    return rerank_candidates(items, rec, weight, k, exclude)[0]


def rerank_candidates(
    items: ItemIndex, rec: UserRecord, weight: float, k: int, exclude: Collection[str]
) -> tuple[RankedItems, list[str]]:
    """:func:`rerank` and the whole candidate list it scored (what ``explain=true`` sends
    the worker: ``z_blend`` is standardised over it)."""
    vec, n = rerank_query(items, rec, weight, k, exclude)
    top, rows = items.search_rows(vec, n)
    return rerank_top(items, rec, vec, top, k, exclude, rows)


def rerank_query(
    items: ItemIndex, rec: UserRecord, weight: float, k: int, exclude: Collection[str]
) -> tuple[np.ndarray, int]:
    """The first stage's search: the blended vector and how many items to fetch with it."""
    assert items.reranker is not None
    model = items.reranker[0]
    return blend(rec.short, rec.long, weight), min(
        items.count(), max(model.n_candidates, k + len(exclude))
    )


def rerank_top(
    items: ItemIndex,
    rec: UserRecord,
    vec: np.ndarray,
    top: list[str],
    k: int,
    exclude: Collection[str],
    rows: np.ndarray | None = None,
) -> tuple[RankedItems, list[str]]:
    """The second stage: ``top`` (the search of :func:`rerank_query`, best first) and the
    user's recent items re-scored; the ranked items and the candidate list.

    ``rows``: ``top``'s rows in :attr:`ItemIndex.checkpoint_ids` (``search_rows``), used
    when they are the re-ranker's rows too (it then need not look the items up).
    """
    assert items.reranker is not None
    model, catalogue = items.reranker
    if rows is not None and catalogue.ids is not items.checkpoint_ids:
        rows = None
    ranked = model.rank(catalogue, rec.short, rec.long, vec, top, rec.recent, k, exclude, rows)
    return ranked, ranked.candidates
