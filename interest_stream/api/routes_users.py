"""The user routes: ``GET /v1/users/{user_id}/interest`` and ``.../recommendations``."""

# No ``from __future__ import annotations``: FastAPI evaluates the route signatures,
# which use names local to :func:`users_router` (k's bound).
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from interest_stream.api.errors import ApiError
from interest_stream.api.state import ApiState, require_items
from interest_stream.core.records import Horizon, InterestOut, RecommendationsOut

__all__ = ["EXCLUDE_TOKENS", "UserId", "users_router"]

EXCLUDE_TOKENS = ("none", "recent", "purchased", "seen")

UserId = Annotated[str, PathParam(min_length=1, max_length=128, description="The user id.")]


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

    @router.get("/v1/users/{user_id:path}/interest", response_model=InterestOut, tags=["users"])
    async def user_interest(user_id: UserId) -> dict[str, Any]:
        """The user's current interest record (404 if unknown)."""
        return state.users.get(user_id).to_dict()

    @router.get(
        "/v1/users/{user_id:path}/recommendations",
        response_model=RecommendationsOut,
        tags=["users"],
    )
    async def recommendations(
        user_id: UserId,
        k: KParam = 10,
        horizon: Annotated[Horizon, Query(description="Which user vector to use.")] = "blend",
        exclude: Annotated[
            str | None,
            Query(
                description="Comma-separated: 'recent' (items in the record's recent_items), "
                "'purchased' (its purchased list), 'seen' (both), 'none' (default). "
                "Records without those lists exclude nothing.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Items nearest the user's interest vector, best first."""
        items = require_items(state)
        if exclude and exclude.strip().lower() != "none":
            rec = state.users.get(user_id)
            skip = _exclusions(exclude, rec.recent_items, rec.purchased)
        else:
            _exclusions(exclude, (), ())
            skip = set()
        vec = state.users.vector(user_id, horizon)
        hits = await state.search(lambda: items.search(vec, k, exclude=skip))
        return {
            "user_id": user_id,
            "horizon": horizon,
            "items": [{"item_id": i, "score": s} for i, s in hits],
        }

    return router
