"""Explaining the learned re-ranker's score (streams/explain_rerank.py) on a real checkpoint.

A small model with a re-ranker is trained on seeded repeat-heavy events (as
tests/unit/test_rerank.py does). For users' re-ranked items, the explanation must: score the
item as the re-ranker does (every feature from a real encode of the window), give feature
terms that sum to the score, shares whose absolute values sum to 1 and the additive identity
``score = prior + terms + deltas + rest``; every event's delta must be the re-ranker score's
change when the window is re-encoded without it (features recomputed, the next older event
entering the latest 20), so the top event is the one whose removal moves the score most.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from model_helpers import tiny_encoder_config, tiny_train_config
from unit.test_rerank import SEED, repeat_events

from interest_stream.core.events import Interaction
from interest_stream.core.rerank import (
    candidate_features,
    candidate_ids,
    load_reranker,
    recent_events,
)
from interest_stream.core.vectors import blend
from interest_stream.models import InterestModel, rerank_fit
from interest_stream.models.training import train
from interest_stream.streams.attribution import encode_units, explain_window, occlusion_units
from interest_stream.streams.explain_rerank import rerank_scorer, rerank_spec

TOL = 2e-4


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    print(f"seed {SEED}")
    events = repeat_events()
    folder = tmp_path_factory.mktemp("explain-rerank") / "model"
    mp = pytest.MonkeyPatch()
    mp.setattr(rerank_fit, "N_CANDIDATES_GRID", (20,))  # one small grid point: seconds
    mp.setattr(rerank_fit, "L2_GRID", (1e-2,))
    cfg = tiny_train_config(
        val_fraction=0.1, protocol="loo", epochs=2, encoder=tiny_encoder_config(), rerank=True
    )
    train(events, folder, cfg, progress=False)
    mp.undo()
    loaded = load_reranker(folder)
    assert loaded is not None
    df = events.sort_values("ts", kind="stable")
    histories = {
        str(u): [Interaction(str(i), str(t), int(ts)) for i, t, ts in
                 zip(g["item_id"], g["event_type"], g["ts"], strict=True)]
        for u, g in df.groupby("user_id", sort=True)
    }  # fmt: skip
    yield {"model": InterestModel.load(folder, device="cpu"), "rerank": loaded,
           "histories": histories}  # fmt: skip


def _rank(served: dict[str, Any], h: list[Interaction], k: int) -> dict[str, Any]:
    """The API's two-stage ranking of a window (``api/ranking.py``, from encoded vectors)."""
    model: InterestModel = served["model"]
    reranker, catalogue = served["rerank"]
    w = model.blend_alpha
    short = model.encode_short([model.short_window(h)])[0]
    long = model.encode_long([h])[0]
    vec = blend(short, long, w)
    top = [catalogue.ids[i] for i in np.argsort(-(catalogue.vectors @ vec), kind="stable")]
    top = top[: reranker.n_candidates]
    recent = recent_events(h)
    ranked = reranker.rank(catalogue, short, long, vec, top, recent, k)
    cand = candidate_ids(top, recent, max(reranker.n_candidates, len(top)))
    return {"items": ranked.items, "scores": ranked.scores, "cand": cand, "weight": w}


def _rerank_score(
    served: dict[str, Any], h: list[Interaction], cand: list[str], start: int | None = None
) -> np.ndarray:
    """The re-ranker's scores of ``cand`` for window ``h``: a real encode, the features
    (short window: ``h[start:]`` when given, as occlusion keeps the window's cut)."""
    model: InterestModel = served["model"]
    reranker, catalogue = served["rerank"]
    sw = model.short_window(h) if start is None else h[start:]
    short = model.encode_short([sw])[0]
    long = model.encode_long([h])[0]
    vec = blend(short, long, model.blend_alpha)
    x = candidate_features(catalogue, short, long, vec, cand, recent_events(h))
    return reranker.score(x)


def _explain(served: dict[str, Any], h: list[Interaction], ranked: dict[str, Any]) -> tuple:
    model: InterestModel = served["model"]
    reranker, catalogue = served["rerank"]
    spec = rerank_spec(reranker, catalogue, ranked["cand"], ranked["items"])
    scorer, targets = rerank_scorer(spec, ranked["weight"], model.dim)  # the wire format
    start = len(h) - len(model.short_window(h))
    units, _ = occlusion_units(len(h), start, "blend", 50)
    variants = encode_units(model, h, start, units, "blend")
    return explain_window(variants, scorer, targets, top=len(units)), units, start


@pytest.mark.parametrize("user", ["u3", "u17", "u42"])
def test_rerank_explanations_are_additive_and_faithful(served: dict[str, Any], user: str) -> None:
    h = served["histories"][user]
    ranked = _rank(served, h, k=5)
    res, units, start = _explain(served, h, ranked)
    full = _rerank_score(served, h, ranked["cand"])
    pos = {c: i for i, c in enumerate(ranked["cand"])}
    for t, item in enumerate(ranked["items"]):
        r = res[t]
        # the score explained is the re-ranker's (as served for these vectors)
        assert r["score"] == pytest.approx(full[pos[item]], abs=TOL)
        assert r["score"] == pytest.approx(ranked["scores"][t], abs=TOL)
        # feature terms sum to the score; every kind is named; item terms are non-event terms
        assert sum(f["value"] for f in r["features"]) == pytest.approx(r["score"], abs=1e-9)
        assert sum(abs(f["share"]) for f in r["features"]) == pytest.approx(1.0, abs=1e-9)
        item_terms = {f["name"]: f["value"] for f in r["features"] if f["kind"] == "item"}
        assert item_terms == pytest.approx({n: v["value"] for n, v in r["terms"].items()})
        # score = prior + terms + every unit's delta + rest; |shares| sum to 1
        deltas = [e["delta"] for e in r["events"]]
        assert len(deltas) == len(units)
        assert r["prior"] + sum(item_terms.values()) + sum(deltas) + r["rest"] == pytest.approx(
            r["score"], abs=1e-9
        )
        assert sum(abs(e["share"]) for e in r["events"]) + abs(r["prior_share"]) + sum(
            abs(v["share"]) for v in r["terms"].values()
        ) == pytest.approx(1.0, abs=1e-9)
        for e in r["events"]:
            assert sum(e["by_kind"].values()) == pytest.approx(e["delta"], abs=1e-9)
    # the empty window's event part: the re-ranker with no vectors' history and no touches
    empty = _rerank_score(served, [], ranked["cand"])
    for t, item in enumerate(ranked["items"]):
        terms = sum(v["value"] for v in res[t]["terms"].values())
        assert res[t]["prior"] + terms == pytest.approx(empty[pos[item]], abs=TOL)
    # every delta is the score change of a real re-encode without that unit
    for t, item in enumerate(ranked["items"][:2]):
        for e in res[t]["events"][:6]:
            unit = next(u for u in units if _same(e, u, h))
            again = _without_unit(served, h, unit, start, ranked["cand"])
            assert e["delta"] == pytest.approx(full[pos[item]] - again[pos[item]], abs=TOL)


def test_the_event_whose_removal_moves_the_rerank_score_most_comes_first(
    served: dict[str, Any],
) -> None:
    """A window where the user keeps buying one item among views of others: the explained
    re-ranked item's top event is the one whose removal (re-encoded) lowers its score most."""
    _reranker, catalogue = served["rerank"]
    rng = np.random.default_rng(SEED)
    others = list(catalogue.ids[:60])
    favourite = catalogue.ids[70]
    base = 1_512_500_000_000
    h = []
    for i in range(26):
        fav = i in (3, 11, 19, 24)
        item = favourite if fav else others[int(rng.integers(len(others)))]
        h.append(Interaction(item, "purchase" if fav else "view", base + i * 600_000))
    ranked = _rank(served, h, k=10)
    assert favourite in ranked["items"]  # the own repeated item is re-ranked in
    res, units, start = _explain(served, h, ranked)
    t = ranked["items"].index(favourite)
    full = _rerank_score(served, h, ranked["cand"])
    col = ranked["cand"].index(favourite)
    drops = []
    for u in units:
        drops.append(full[col] - _without_unit(served, h, u, start, ranked["cand"])[col])
    biggest = units[int(np.argmax(drops))]
    top = res[t]["events"][0]
    assert _same(top, biggest, h)
    assert top["delta"] == pytest.approx(max(drops), abs=TOL)
    assert top["item_id"] == favourite  # here: one of its purchases
    names = [f["name"] for f in res[t]["features"][:4]]
    print(f"\ntop event {top['item_id']} ({top['event_type']}), delta {top['delta']:.3f}, "
          f"by kind {top['by_kind']}, largest features {names}")  # fmt: skip


def _without_unit(
    served: dict[str, Any], h: list[Interaction], unit: Any, start: int, cand: list[str]
) -> np.ndarray:
    """Scores of the window re-encoded without ``unit`` (its short window: the same cut)."""
    gone = set(unit.indices)
    kept = [x for i, x in enumerate(h) if i not in gone]
    return _rerank_score(served, kept, cand, start - sum(1 for i in gone if i < start))


def _same(e: dict[str, Any], unit: Any, h: list[Interaction]) -> bool:
    if e.get("group"):
        return bool(unit.group)
    if unit.group:
        return False
    x = h[unit.indices[0]]
    return (x[0], x[1], x[2]) == (e["item_id"], e["event_type"], e["ts"])
