"""The user routes: ``GET /v1/users/{user_id}/interest`` and ``.../recommendations``.

With ``explain=true`` both ask the worker holding the user why (:mod:`.explain`).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the route signatures,
# which use names local to :func:`users_router` (k's bound).
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from interest_stream.api.dashboard import CATEGORY_POOL, top_categories
from interest_stream.api.errors import ApiError
from interest_stream.api.explain import category_targets, info
from interest_stream.api.ranking import choose_ranking, rerank_query, rerank_top
from interest_stream.api.state import ApiState, require_items
from interest_stream.core.records import Horizon, InterestOut, Ranking, RecommendationsOut
from interest_stream.streams.explain_rerank import rerank_spec

__all__ = ["EXCLUDE_TOKENS", "ExplainEvents", "UserId", "blend_weight", "recommend", "users_router"]

EXCLUDE_TOKENS = ("none", "recent", "purchased", "seen")

UserId = Annotated[str, PathParam(min_length=1, max_length=128, description="The user id.")]
Explain = Annotated[
    bool,
    Query(
        description="Also say which of the user's events drive each result (asks the "
        "worker holding the user; 503 explain_unavailable without one).",
    ),
]
ExplainEvents = Annotated[
    int, Query(ge=1, le=20, description="With explain=true: events listed per result.")
]
ExcludeParam = Annotated[
    str | None,
    Query(
        description="Comma-separated: 'recent' (items in the record's recent_items), "
        "'purchased' (its purchased list), 'seen' (both), 'none' (default). "
        "Records without those lists exclude nothing.",
    ),
]
RankParam = Annotated[
    Ranking | None,
    Query(
        description="'rerank': the two-stage ranking (candidates of the blend and "
        "the user's recent items, re-scored by the checkpoint's learned re-ranker); "
        "'vector': the horizon's vector alone. Default: 'rerank' for horizon=blend "
        "when the checkpoint has a re-ranker and the record its recent events, "
        "else 'vector'. The answer's 'ranking' says which was used.",
    ),
]
#: Top items explained per vector by ``/interest?explain=true``.
INTEREST_TOP_ITEMS = 5


def blend_weight(state: ApiState) -> float:
    """The short vector's weight in ``blend`` (the user index's, as the ranking uses)."""
    weight = getattr(state.users, "blend_weight", None)
    if weight is None:
        weight = state.items.blend_alpha if state.items is not None else 0.5
    return float(weight)


def _exclusions(spec: str | None, recent: Sequence[str], purchased: Sequence[str]) -> set[str]:
    if not spec:
        return set()
    tokens = {t.strip().lower() for t in spec.split(",") if t.strip()}
    unknown = sorted(tokens - set(EXCLUDE_TOKENS))
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            f"query.exclude: unknown value(s) {', '.join(unknown)}; use a comma-separated "
            f"list of {', '.join(EXCLUDE_TOKENS)}",
        )
    out: set[str] = set()
    if tokens & {"recent", "seen"}:
        out.update(recent)
    if tokens & {"purchased", "seen"}:
        out.update(purchased)
    return out


def users_router(state: ApiState) -> APIRouter:
    """The user routes over ``state``."""
    router = APIRouter()
    max_k = state.settings.max_k
    KParam = Annotated[int, Query(ge=1, le=max_k, description=f"Results, 1..{max_k}.")]

    @router.get(
        "/v1/users/{user_id:path}/interest",
        response_model=InterestOut,
        response_model_exclude_unset=True,
        tags=["users"],
    )
    async def user_interest(
        user_id: UserId, explain: Explain = False, explain_events: ExplainEvents = 3
    ) -> dict[str, Any]:
        """The user's current interest record (404 if unknown); with ``explain=true`` also
        the top items and categories of the short and long vectors and the events behind
        each."""
        rec = await state.users_call(state.users.get, user_id)
        out = rec.to_dict()
        if explain:
            pairs = (("short", rec.short), ("long", rec.long))
            out["explain"] = {
                h: await _explain_vector(state, user_id, h, v, explain_events) for h, v in pairs
            }
        return out

    @router.get(
        "/v1/users/{user_id:path}/recommendations",
        response_model=RecommendationsOut,
        response_model_exclude_unset=True,
        tags=["users"],
    )
    async def recommendations(
        user_id: UserId,
        k: KParam = 10,
        horizon: Annotated[Horizon, Query(description="Which user vector to use.")] = "blend",
        exclude: ExcludeParam = None,
        rank: RankParam = None,
        explain: Explain = False,
        explain_events: ExplainEvents = 3,
    ) -> dict[str, Any]:
        """Items nearest the user's interest vector, best first (with ``explain=true``:
        per item, the user's events that contributed most to its score)."""
        out, cand = await recommend(state, user_id, k, horizon, exclude, rank)
        if explain and out["items"]:
            await _explain_items(state, user_id, out, horizon, explain_events, cand)
        return out

    return router


async def recommend(
    state: ApiState,
    user_id: str,
    k: int,
    horizon: Horizon,
    exclude: str | None,
    rank: Ranking | None,
) -> tuple[dict[str, Any], list[str] | None]:
    """``/recommendations``' answer without explanations (the route and the fast path's).

    Returns:
        The answer and, when the re-ranker answered, the candidate list it scored.

    Raises:
        ApiError: 422 for ``rank=rerank`` with another horizon or an unknown ``exclude``
            token, 404 for an unknown user, 503 without a model.
    """
    items = require_items(state)
    if rank == "rerank" and horizon != "blend":
        raise ApiError(422, "invalid_request", "query.rank: rerank needs horizon=blend")
    rec = None
    if (exclude and exclude.strip().lower() != "none") or (
        rank != "vector" and horizon == "blend" and items.reranker is not None
    ):
        rec = await state.users_call(state.users.get, user_id)
    skip = _exclusions(exclude, rec.recent_items, rec.purchased) if rec else set()
    if rec is None:
        _exclusions(exclude, (), ())
    ranking: Ranking = "vector"
    if rec is not None and horizon == "blend":
        ranking = choose_ranking(items, rank, rec)
    cand: list[str] | None = None
    if ranking == "rerank" and rec is not None:
        user = rec
        weight = blend_weight(state)
        # only the search may leave the event loop (offload_search): FAISS releases the
        # interpreter lock there, the re-scoring in Python would fight the loop for it
        vec, n = rerank_query(items, user, weight, k, skip)
        top, rows = await state.search(items.search_rows, vec, n)
        ranked, cand = rerank_top(items, user, vec, top, k, skip, rows)
        hits = list(zip(ranked.items, ranked.scores.tolist(), strict=True))
    else:
        vec = await state.users_call(state.users.vector, user_id, horizon)
        hits = await state.search(lambda: items.search(vec, k, exclude=skip))
    out: dict[str, Any] = {
        "user_id": user_id,
        "horizon": horizon,
        "ranking": ranking,
        "items": [{"item_id": i, "score": s} for i, s in hits],
    }
    return out, cand


async def _explain_items(
    state: ApiState,
    user_id: str,
    out: dict[str, Any],
    horizon: str,
    top: int,
    candidates: list[str] | None,
) -> None:
    """Add ``because`` and the ``explain`` block: re-ranked items (``candidates``: the
    list the re-ranker scored) explain the re-ranker's score, every item; otherwise each
    item with a vector explains its vector score."""
    items = require_items(state)
    spec = None
    if candidates is not None and items.reranker is not None:
        known = list(out["items"])
        spec = rerank_spec(*items.reranker, candidates, [it["item_id"] for it in known])
        targets = np.zeros((len(known), items.dim), dtype=np.float32)  # the worker's from spec
    else:
        known = [it for it in out["items"] if it["item_id"] in items]
        if not known:
            return
        targets = np.stack([items.vector(it["item_id"]) for it in known])
    ans = await state.workers.explain(
        user_id, targets, horizon=horizon, weight=blend_weight(state), top=top, rerank=spec
    )
    for item, res in zip(known, ans["results"], strict=True):
        item["because"] = res
    out["explain"] = info(ans)


async def _explain_vector(
    state: ApiState, user_id: str, horizon: str, vec: np.ndarray, top: int
) -> dict[str, Any]:
    """Top items and categories of one of the user's vectors, each with its events."""
    items = require_items(state)
    hits = await state.search(items.search, vec, CATEGORY_POOL)
    shown = hits[:INTEREST_TOP_ITEMS]
    cats = top_categories(hits, items) or []
    vectors = np.stack([items.vector(i) for i, _ in hits]) if hits else np.zeros((0, 1))
    targets = list(vectors[: len(shown)])
    if cats:
        wanted = [c["category"] for c in cats]
        targets.extend(
            category_targets(hits, vectors, [items.category(i) for i, _ in hits], wanted)
        )
    if not targets:
        return {"items": [], "categories": [], "explain": None}
    ans = await state.workers.explain(
        user_id, np.stack(targets), horizon=horizon, weight=blend_weight(state), top=top
    )
    res = ans["results"]
    return {
        "items": [
            {"item_id": i, "score": s, "category": items.category(i), "title": items.title(i),
             "because": r}
            for (i, s), r in zip(shown, res, strict=False)
        ],
        "categories": [
            {"category": c["category"], "share": c["share"], "because": r}
            for c, r in zip(cats, res[len(shown) :], strict=True)
        ],
        "explain": info(ans),
    }  # fmt: skip
