"""The item and audience routes: ``GET /v1/items/{item_id}/similar``, ``POST /v1/audience``."""

# No ``from __future__ import annotations``: FastAPI evaluates the route signatures,
# which use names local to :func:`items_router` (k's bound).
import asyncio
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from interest_stream.api.errors import ApiError
from interest_stream.api.explain import info
from interest_stream.api.routes_users import blend_weight
from interest_stream.api.schemas import AudienceOut, AudienceRequest, SimilarOut
from interest_stream.api.state import ApiState, require_items

__all__ = ["ItemId", "items_router"]

ItemId = Annotated[str, PathParam(min_length=1, max_length=128, description="The item id.")]


def items_router(state: ApiState) -> APIRouter:
    """The item and audience routes over ``state``."""
    router = APIRouter()
    max_k = state.settings.max_k
    KParam = Annotated[int, Query(ge=1, le=max_k, description=f"Results, 1..{max_k}.")]

    @router.get("/v1/items/{item_id:path}/similar", response_model=SimilarOut, tags=["items"])
    async def similar(item_id: ItemId, k: KParam = 10) -> dict[str, Any]:
        """Items nearest an item (itself excluded)."""
        items = require_items(state)
        hits = await state.search(items.similar, item_id, k)
        return {"item_id": item_id, "items": [{"item_id": i, "score": s} for i, s in hits]}

    @router.post(
        "/v1/audience",
        response_model=AudienceOut,
        response_model_exclude_unset=True,
        tags=["audience"],
    )
    async def audience(body: AudienceRequest) -> dict[str, Any]:
        """Users whose interest is nearest an item of the catalogue or an item/ad vector."""
        if body.k > max_k:
            raise ApiError(422, "invalid_request", f"body.k: must be between 1 and {max_k}")
        users = state.users
        if body.item_id is not None:
            query = require_items(state).vector(body.item_id)
        else:
            assert body.vector is not None
            expected = users.dim or (state.items.dim if state.items is not None else None)
            if expected is not None and len(body.vector) != expected:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"body.vector: has dimension {len(body.vector)}, expected {expected}",
                )
            query = np.asarray(body.vector, dtype=np.float32)
            if not np.isfinite(query).all():  # finite as float64, not as float32 (e.g. 1e300)
                raise ApiError(
                    422, "invalid_request", "body.vector: values must fit in float32 (|x| < 3.4e38)"
                )
        if users.dim is None:
            return {"users": []}
        # always in the pool: a search over up to millions of users (FAISS releases the GIL)
        found, scores = await anyio.to_thread.run_sync(users.search, query, body.k, body.horizon)
        out = [
            {"user_id": u, "score": float(s)}
            for u, s in zip(found[0], scores[0].tolist(), strict=False)
        ]
        if body.explain and out:
            await _explain_users(state, out, query, body)
        return {"users": out}

    return router


async def _explain_users(
    state: ApiState, users: list[dict[str, Any]], query: np.ndarray, body: AudienceRequest
) -> None:
    """Add to each user the events that put them in the audience (asked concurrently)."""
    target = np.asarray(query, dtype=np.float32)[None, :]
    weight = blend_weight(state)

    async def one(user: dict[str, Any]) -> None:
        try:
            ans = await state.workers.explain(
                user["user_id"], target, horizon=body.horizon, weight=weight,
                top=body.explain_events,
            )  # fmt: skip
        except ApiError as exc:
            if exc.status == 404:  # forgotten or moved since the search: nothing to say
                return
            raise
        user["because"] = ans["results"][0]
        user["explain"] = info(ans)

    await asyncio.gather(*(one(u) for u in users))
