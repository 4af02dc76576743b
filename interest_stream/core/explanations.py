"""The answer bodies of ``explain=true`` (shared by the API and the Python client; no FastAPI).

Definitions: docs/CONTRACTS.md section 5 ("Explanations"), docs/DESIGN.md ("Explanations").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "EventShare",
    "ExplainInfo",
    "ExplainedCategory",
    "ExplainedItem",
    "Explanation",
    "FeatureShare",
    "HorizonExplain",
    "TermShare",
]


class EventShare(BaseModel):
    """One of the user's events (or the group of older events) behind a score."""

    item_id: str | None = Field(None, description="The event's item (absent for a group).")
    event_type: str | None = Field(None, description="The event's type.")
    ts: int | None = Field(None, description="The event's time (epoch ms).")
    group: str | None = Field(
        None, description="'older': the long history's events older than those occluded alone."
    )
    events: int | None = Field(None, description="Events in the group.")
    delta: float = Field(description="Score of the whole window minus the score without it.")
    share: float = Field(description="delta / Z (see Explanation); signed.")
    by_kind: dict[str, float] | None = Field(
        None,
        description="Re-ranker only: delta split by the kind of feature it moves ('vector', "
        "'touch', 'cross'; they sum to delta).",
    )


class FeatureShare(BaseModel):
    """One feature term of a re-ranker's score (the terms sum to the score)."""

    name: str = Field(description="The re-ranker feature (core/rerank.py FEATURES).")
    kind: str = Field(
        description="'vector' (the user's vectors), 'touch' (the user's own recent events of "
        "the item), 'cross' (both), 'item' (popularity, trend, no vector: not the user's events)."
    )
    value: float = Field(description="The feature's term for the whole window.")
    share: float = Field(description="value / sum of |value| over the features; signed.")
    prior: float = Field(description="The feature's term for the empty window.")


class TermShare(BaseModel):
    """A non-event term of the score (a learned re-ranker's feature term)."""

    value: float
    share: float


class Explanation(BaseModel):
    """Why a score: occlusion of the user's events (docs/DESIGN.md, "Explanations").

    ``Z = sum |delta| over every occluded event + |prior| + sum |terms|``; every
    ``share`` is a value over ``Z``, so the absolute shares of all events, the prior and
    the terms add up to 1 (only the top events are listed).
    """

    score: float = Field(description="Score of the user's whole window, re-encoded now.")
    prior: float = Field(description="Score of the empty window: the non-event part.")
    prior_share: float = Field(description="prior / Z.")
    terms: dict[str, TermShare] = Field(
        default_factory=dict, description="Non-event terms of a re-ranker (none: vector score)."
    )
    rest: float = Field(
        description="score - prior - terms - sum of all deltas: what single removals miss."
    )
    events: list[EventShare] = Field(description="Top contributing events, largest delta first.")
    features: list[FeatureShare] | None = Field(
        None, description="Re-ranker only: every feature's term, largest |value| first."
    )


class ExplainInfo(BaseModel):
    """What an explanation was computed from."""

    method: Literal["occlusion"] = "occlusion"
    scorer: str = Field(
        "vector",
        description="The score explained: 'rerank' = the learned re-ranker's score (items "
        "ranked by it), 'vector' = inner product of the horizon's vector.",
    )
    version: int = Field(description="The window's version explained.")
    model_version: str
    history_events: int = Field(description="Events in the user's long history.")
    occluded: int = Field(description="Events removed one by one.")
    older_events: int = Field(description="Older events removed as one group.")


class ExplainedItem(BaseModel):
    """A top item of a vector, with its category and title when the catalogue has them."""

    item_id: str
    score: float
    category: str | None = None
    title: str | None = None
    because: Explanation


class ExplainedCategory(BaseModel):
    """A top category of a vector: its share of the top items and the events behind it
    (explained target: the rank-weighted mean vector of its items among the top 50)."""

    category: str
    share: float
    because: Explanation


class HorizonExplain(BaseModel):
    """The top items and categories of one of the user's vectors, with their events."""

    items: list[ExplainedItem]
    categories: list[ExplainedCategory]
    explain: ExplainInfo | None = Field(description="None when the vector has no top item.")
