"""Request and response bodies of the HTTP API (they also document it at ``/docs``).

The answer bodies built from output records live in :mod:`interest_stream.core.records`
(the Python client shares them without importing FastAPI); the request bodies and
the error body are here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from interest_stream.core.records import (
    AudienceOut,
    ForgetOut,
    Horizon,
    InterestOut,
    RecommendationsOut,
    ScoredItem,
    ScoredUser,
    SimilarOut,
)

__all__ = [
    "AudienceOut",
    "AudienceRequest",
    "ErrorOut",
    "ForgetOut",
    "Horizon",
    "InterestOut",
    "RecommendationsOut",
    "ScoredItem",
    "ScoredUser",
    "SimilarOut",
]

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ErrorOut(BaseModel):
    """Every error answer."""

    error: str = Field(description="Machine-readable code, e.g. unknown_user, invalid_request.")
    detail: Any = Field(description="What went wrong, for people.")


class AudienceRequest(BaseModel):
    """Who is interested in this item or ad? Give exactly one of ``item_id`` / ``vector``."""

    model_config = ConfigDict(extra="forbid")

    item_id: str | None = Field(
        None, min_length=1, max_length=128, description="An item of the loaded catalogue."
    )
    vector: list[FiniteFloat] | None = Field(
        None,
        min_length=1,
        description="An item/ad vector in the model's space (the model's dimension).",
    )
    k: int = Field(10, ge=1, description="Users to return (at most INTEREST_MAX_K).")
    horizon: Horizon = Field("blend", description="Which user vector to match.")
    explain: bool = Field(
        False,
        description="Also say, per user returned, which of the user's events put them in "
        "the audience (asks the workers; 503 explain_unavailable without one).",
    )
    explain_events: int = Field(3, ge=1, le=20, description="With explain: events per user.")

    @model_validator(mode="after")
    def _one_of(self) -> AudienceRequest:
        if (self.item_id is None) == (self.vector is None):
            raise ValueError("give exactly one of item_id and vector")
        return self
