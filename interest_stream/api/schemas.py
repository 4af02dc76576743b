"""Request and response bodies of the HTTP API (they also document it at ``/docs``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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

Horizon = Literal["short", "long", "blend"]

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ErrorOut(BaseModel):
    """Every error answer."""

    error: str = Field(description="Machine-readable code, e.g. unknown_user, invalid_request.")
    detail: Any = Field(description="What went wrong, for people.")


class InterestOut(BaseModel):
    """A user's current interest: the output record of the user-interest topic."""

    user_id: str
    version: int = Field(description="Grows with every applied event of the user.")
    event_time: int | None = Field(description="Newest applied event's time (epoch ms).")
    updated_at: int | None = Field(description="When the vectors were written (epoch ms).")
    model_version: str | None
    short: list[float] = Field(description="Short-term interest vector.")
    long: list[float] = Field(description="Long-term interest vector.")


class ScoredItem(BaseModel):
    """An item and its inner-product score."""

    item_id: str
    score: float


class ScoredUser(BaseModel):
    """A user and its inner-product score."""

    user_id: str
    score: float


class RecommendationsOut(BaseModel):
    """The items nearest a user's interest vector."""

    user_id: str
    horizon: Horizon
    items: list[ScoredItem]


class SimilarOut(BaseModel):
    """The items nearest an item (itself excluded)."""

    item_id: str
    items: list[ScoredItem]


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

    @model_validator(mode="after")
    def _one_of(self) -> AudienceRequest:
        if (self.item_id is None) == (self.vector is None):
            raise ValueError("give exactly one of item_id and vector")
        return self


class AudienceOut(BaseModel):
    """The users whose interest is nearest the item/ad."""

    users: list[ScoredUser]


class ForgetOut(BaseModel):
    """What ``DELETE /v1/users/{user_id}`` did."""

    user_id: str
    removed: bool = Field(description="Whether this replica held the user.")
    tombstone: bool = Field(description="Whether the tombstone reached the output topic.")
