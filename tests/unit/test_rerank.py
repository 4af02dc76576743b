"""The repeat-aware re-ranker (issue #13): one feature path for training, evaluation and the API.

A small real model is trained once (leave-one-out protocol, re-ranker fit on the valid role) on
seeded synthetic events where users keep returning to a few of their own items; the tests
check that the re-ranker learns that, that the API's path (output record -> user index ->
features) gives the numbers the evaluation's path (event history -> features) gives, that the
checkpoint files round-trip without torch, and the ``rank`` parameter of ``/recommendations``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from model_helpers import tiny_encoder_config, tiny_train_config

from interest_stream.api import create_app, get_state
from interest_stream.api.ranking import rerank
from interest_stream.core.checkpoint import CheckpointError
from interest_stream.core.events import EVENT_TYPES
from interest_stream.core.records import build_record, decode_record, dumps_record
from interest_stream.core.rerank import (
    FEATURES,
    RERANK_FILE,
    Reranker,
    candidate_features,
    load_reranker,
    recent_events,
)
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex, UserIndex
from interest_stream.models import rerank_fit
from interest_stream.models.loo import loo_frame, loo_split
from interest_stream.models.loo_eval import evaluate_loo
from interest_stream.models.training import train

SEED = 13


def repeat_events(n_users: int = 150, n_items: int = 400, per_user: int = 30) -> pd.DataFrame:
    """Users browse two categories and, half of the time, go back to one of their last 3 items."""
    rng = np.random.default_rng(SEED)
    cats = rng.integers(0, 8, size=n_items)
    by_cat = [np.flatnonzero(cats == c) for c in range(8)]
    rows = []
    t0 = 1_512_000_000_000
    for u in range(n_users):
        favs = rng.choice(8, size=2, replace=False)
        ts = t0 + np.sort(rng.integers(0, 3 * 86_400_000, size=per_user))
        seen: list[int] = []
        for t in ts:
            if len(seen) >= 3 and rng.random() < 0.5:
                item = int(seen[-1 - int(rng.integers(0, 3))])
            else:
                item = int(rng.choice(by_cat[favs[int(rng.random() < 0.3)]]))
            seen.append(item)
            etype = EVENT_TYPES[int(rng.choice(5, p=[0.7, 0.1, 0.1, 0.05, 0.05]))]
            rows.append((f"u{u}", f"i{item}", etype, int(t), f"c{cats[item]}"))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "category"])
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, pd.DataFrame]]:
    print(f"seed {SEED}")
    events = repeat_events()
    folder = tmp_path_factory.mktemp("rerank") / "model"
    mp = pytest.MonkeyPatch()
    mp.setattr(rerank_fit, "N_CANDIDATES_GRID", (20, 50))  # a small grid: seconds, not minutes
    mp.setattr(rerank_fit, "L2_GRID", (1e-3, 1e-1))
    cfg = tiny_train_config(
        val_fraction=0.1, protocol="loo", epochs=2, encoder=tiny_encoder_config(), rerank=True
    )
    train(events, folder, cfg, progress=False)
    mp.undo()
    yield folder, events


def test_reranker_learns_the_repeat_signal(trained: tuple[Path, pd.DataFrame]) -> None:
    folder, events = trained
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["rerank"]["file"] == RERANK_FILE
    rep = evaluate_loo(events, folder, n_bootstrap=50, device="cpu")
    methods = rep["tasks"]["all"]["methods"]
    nd = {m: methods[m]["ndcg@10"]["mean"] for m in methods}
    print({m: round(v, 4) for m, v in nd.items()})
    assert rep["default_ranking"] == "rerank"
    # the vectors alone cannot say "this item again"; the re-ranker learns it from the
    # own-touch features (as well as the hand-made repeat_last rule, which is this data's law)
    assert nd["rerank"] > nd["blend"] + 0.1
    assert nd["rerank"] > 0.9 * nd["repeat_last"]
    w = rep["rerank"]["weights"]
    assert "in_recent" in w and "pos_decay" in w
    assert "rerank" in rep["tasks"]["all"]["ndcg@10_ratio_vs_repeat_last"]


def _record_bytes(user: str, history: list[Any], vecs: dict[str, np.ndarray], u: int) -> bytes:
    """The output record the worker would publish for this history (core.records)."""
    items = [e.item_id for e in history]
    types = [EVENT_TYPES.index(e.event_type) for e in history]
    times = [e.ts for e in history]
    rec = build_record(
        user, version=len(history), event_time=times[-1], updated_at=times[-1],
        model_version="m", short=vecs["short"][u], long=vecs["long"][u], items=items,
        types=types, times=times, counts={},
    )  # fmt: skip
    return dumps_record(rec)


@pytest.fixture(scope="module")
def served(trained: tuple[Path, pd.DataFrame]) -> dict[str, Any]:
    """The test split's users through both paths: evaluation's arrays and API records."""
    from interest_stream.models.eval_methods import model_vectors

    folder, events = trained
    split = loo_split(loo_frame(events), "test")
    vecs, cand, info, _t = model_vectors(split, folder, "cpu", None)
    items = ItemIndex.from_checkpoint(folder, backend="numpy")
    users = UserIndex(items.dim, backend="numpy", blend_weight=items.blend_alpha)
    for u, user in enumerate(split.users[:30]):
        rec = decode_record(
            user.encode(), _record_bytes(user, split.histories[u], vecs, u), dim=None
        )
        users.upsert_many([rec])  # type: ignore[list-item]
    return {"split": split, "vecs": vecs, "cand": cand, "known": info["known"], "items": items,
            "users": users, "alpha": items.blend_alpha}  # fmt: skip


def test_features_are_the_same_from_a_record_and_from_events(served: dict[str, Any]) -> None:
    split, vecs, items, users = served["split"], served["vecs"], served["items"], served["users"]
    assert items.reranker is not None
    model, catalogue = items.reranker
    for u in range(10):
        user = split.users[u]
        rec = users.get(user)
        # the record carries exactly the latest 20 events the evaluation reads
        assert list(rec.recent) == recent_events(split.histories[u])
        data = rerank_fit.split_candidates(
            split, vecs, served["cand"], served["known"], catalogue, model.n_candidates, [u]
        )
        from_record = candidate_features(
            catalogue, rec.short, rec.long,
            served["alpha"] * rec.short + (1 - served["alpha"]) * rec.long,
            data.items, rec.recent,
        )  # fmt: skip
        # records carry vectors rounded to 6 decimals: the same features up to that
        np.testing.assert_allclose(from_record, data.x, atol=1e-4)
        # and the API's ranking is the evaluation's
        s = model.score(data.x)
        order = np.lexsort((np.arange(len(s)), -s))[:10]
        api = rerank(items, rec, served["alpha"], 10, ())
        assert api.items == [data.items[i] for i in order]
        np.testing.assert_allclose(api.scores, s[order], atol=1e-3)
        np.testing.assert_allclose(model.contributions(api.features).sum(axis=1), api.scores)


def test_checkpoint_round_trip_is_torch_free(trained: tuple[Path, pd.DataFrame]) -> None:
    folder, _events = trained
    code = (
        "import sys, json\n"
        "from interest_stream.core.rerank import load_reranker\n"
        f"model, items = load_reranker({str(folder)!r})\n"
        "assert 'torch' not in sys.modules\n"
        "print(json.dumps(model.to_json()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    loaded = load_reranker(folder)
    assert loaded is not None
    model, items = loaded
    assert Reranker.from_json(doc).to_json() == model.to_json()
    assert items.stats.shape[0] == len(items.ids) and set(model.feature_names) <= set(FEATURES)
    # contributions are additive: they sum to the score
    x = np.random.default_rng(SEED).normal(size=(5, len(FEATURES)))
    np.testing.assert_allclose(model.contributions(x).sum(axis=1), model.score(x))
    assert set(model.explain(x[0])) == set(model.feature_names)
    with pytest.raises(CheckpointError, match="format"):
        Reranker.from_json({**doc, "format_version": 99})


class _NoPublisher:
    def tombstone(self, user_id: str) -> None:
        raise AssertionError("no DELETE here")

    def close(self) -> None:
        pass


@pytest.fixture
def api(served: dict[str, Any]) -> Iterator[TestClient]:
    settings = Settings(admin_token="t", max_k=50)
    app = create_app(
        settings, item_index=served["items"], user_index=served["users"], start_consumer=False,
        publisher=_NoPublisher(), forget_hooks=[],
    )  # fmt: skip
    with TestClient(app) as client:
        yield client


def test_api_default_is_rerank_and_rank_vector_keeps_the_vector(
    api: TestClient, served: dict[str, Any]
) -> None:
    split, items, users = served["split"], served["items"], served["users"]
    user = split.users[0]
    rec = users.get(user)
    body = api.get(f"/v1/users/{user}/recommendations?k=5").json()
    assert body["ranking"] == "rerank"
    want = rerank(items, rec, served["alpha"], 5, ())
    assert [i["item_id"] for i in body["items"]] == want.items
    np.testing.assert_allclose([i["score"] for i in body["items"]], want.scores, atol=1e-6)
    vec = api.get(f"/v1/users/{user}/recommendations?k=5&rank=vector").json()
    assert vec["ranking"] == "vector"
    assert [i["item_id"] for i in vec["items"]] == [
        i for i, _ in items.search(users.vector(user, "blend"), 5)
    ]
    short = api.get(f"/v1/users/{user}/recommendations?k=5&horizon=short").json()
    assert short["ranking"] == "vector"
    # exclude still applies to the re-ranked list
    ex = api.get(f"/v1/users/{user}/recommendations?k=10&exclude=recent").json()
    assert ex["ranking"] == "rerank"
    assert not {i["item_id"] for i in ex["items"]} & set(rec.recent_items)
    assert len(ex["items"]) == 10
    # a record without its recent events gets the vector ranking
    users.upsert("bare", 1, rec.short, rec.long, {"recent_items": list(rec.recent_items)})
    bare = api.get("/v1/users/bare/recommendations?k=5").json()
    assert bare["ranking"] == "vector"
    app_state = get_state(api.app)  # type: ignore[arg-type]
    assert app_state.items is items


def test_compressed_scan_serves_the_same_rankings(served: dict[str, Any]) -> None:
    """The API's default item scan (8-bit codes, exact re-scoring) gives the float32 index's
    answers on a trained model's vectors: the vector ranking and the re-ranked one."""
    folder = served["items"].source
    flat = ItemIndex.from_checkpoint(folder, scan="flat")
    scanned = ItemIndex.from_checkpoint(folder, scan="sq8")
    assert scanned.stats()["scan"]["kind"] == "sq8"
    users, alpha = served["users"], served["alpha"]
    for user in served["split"].users[:30]:
        rec = users.get(user)
        vec = users.vector(user, "blend")
        for k in (5, 50):
            a, b = (
                flat.search(vec, k, exclude=rec.recent_items[:3]),
                scanned.search(vec, k, exclude=rec.recent_items[:3]),
            )
            assert [i for i, _ in a] == [i for i, _ in b]
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-6)
        want, got = rerank(flat, rec, alpha, 10, ()), rerank(scanned, rec, alpha, 10, ())
        assert got.items == want.items
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    assert scanned.stats()["scan"]["searches"] >= 90


@pytest.mark.parametrize("query", ["rank=bogus", "rank=", "rank=rerank&horizon=short"])
def test_api_bad_rank_is_422(api: TestClient, served: dict[str, Any], query: str) -> None:
    user = served["split"].users[0]
    r = api.get(f"/v1/users/{user}/recommendations?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"


def test_grid_order_tries_the_usual_winner_first() -> None:
    order = rerank_fit._grid_order(("vector", "repeat", "full"), (50, 100, 200), (1e-4, 1e-2, 1e-1))
    assert order[0] == ("full", 50, 1e-2)
    assert len(order) == len(set(order)) == 27


def test_spent_time_budget_fits_the_first_point_without_cross_fitting(tmp_path: Path) -> None:
    """``max_train_seconds`` covers the re-ranker: past the budget, one fit, no grid search."""
    events = repeat_events(n_users=60)
    cfg = tiny_train_config(
        val_fraction=0.1, protocol="loo", epochs=2, rerank=True, max_train_seconds=1e-3
    )
    train(events, tmp_path / "model", cfg, progress=False)
    info = json.loads((tmp_path / "model" / "metrics.json").read_text())["phases"]["rerank"]
    assert info["grid"] == {} and info["grid_points"] == 1 and info["cv_ndcg@10"] is None
    assert (info["feature_set"], info["n_candidates"]) == (
        "full",
        min(rerank_fit.N_CANDIDATES_GRID),
    )
    assert load_reranker(tmp_path / "model") is not None


def _touch_reference(cand: list[str], recent: list[tuple[str, str, int]]) -> np.ndarray:
    """The own-touch columns straight from :data:`FEATURES`' definitions, one candidate
    at a time (the reference the vectorised code must equal)."""
    col = {name: j for j, name in enumerate(FEATURES)}
    x = np.zeros((len(cand), len(FEATURES)))
    newest = max(ts for _i, _t, ts in recent)
    for k, item in enumerate(cand):
        mine = [(j, t, ts) for j, (i, t, ts) in enumerate(recent) if i == item]
        if not mine:
            continue
        x[k, col["in_recent"]] = 1.0
        x[k, col["is_last"]] = float(recent[-1][0] == item)
        for etype in EVENT_TYPES:
            x[k, col[f"n_{etype}"]] = np.log1p(sum(1 for _j, t, _ts in mine if t == etype))
        x[k, col["log_touches"]] = np.log1p(sum(1 for _j, t, _ts in mine if t in EVENT_TYPES))
        j, _t, ts = mine[-1]
        age_h = max(newest - ts, 0) / 3_600_000.0
        x[k, col["pos_decay"]] = 1.0 / (1.0 + (len(recent) - 1 - j))
        x[k, col["age_decay_1h"]] = np.exp(-age_h)
        x[k, col["age_decay_1d"]] = np.exp(-age_h / 24.0)
    return x


def test_touch_features_follow_their_definition(served: dict[str, Any]) -> None:
    """Random recent events (repeats, an unknown type, items outside the candidate list)."""
    rng = np.random.default_rng(SEED + 5)
    print(f"seed {SEED + 5}")
    catalogue = served["items"].reranker[1]
    dim = served["items"].dim
    cols = [FEATURES.index(f) for f in FEATURES if f not in ("s_short", "s_long", "s_blend",
            "z_blend", "unknown", "log_pop", "log_trend_1d", "log_trend_7d", "recent_x_long",
            "recent_x_pop")]  # fmt: skip
    for _ in range(50):
        pool = [catalogue.ids[int(r)] for r in rng.choice(len(catalogue.ids), 12, replace=False)]
        types = [*EVENT_TYPES, "other"]
        recent = [(pool[int(rng.integers(0, 12))], types[int(rng.integers(0, 6))],
                   1_700_000_000_000 + int(rng.integers(0, 10**8))) for _ in range(20)]  # fmt: skip
        recent.sort(key=lambda e: e[2])
        cand = [*pool[:9], "not-an-item"]  # 3 of the recent items are not candidates
        vecs = rng.standard_normal((3, dim)).astype(np.float32)
        x = candidate_features(catalogue, vecs[0], vecs[1], vecs[2], cand, recent)
        want = _touch_reference(cand, recent)
        np.testing.assert_allclose(x[:, cols], want[:, cols], rtol=1e-15, atol=0)
        in_recent = x[:, FEATURES.index("in_recent")]
        np.testing.assert_array_equal(
            x[:, FEATURES.index("recent_x_long")], in_recent * x[:, FEATURES.index("s_long")]
        )


def test_scan_rows_give_the_same_ranking(served: dict[str, Any]) -> None:
    """``rank`` with the scan's rows (the API's path) is bit-identical to looking them up."""
    folder = served["items"].source
    scanned = ItemIndex.from_checkpoint(folder, scan="sq8")
    assert scanned.reranker is not None and scanned.checkpoint_ids is not None
    model, catalogue = scanned.reranker
    assert catalogue.ids is scanned.checkpoint_ids  # one list: rows are shared
    users, alpha = served["users"], served["alpha"]
    for user in served["split"].users[:30]:
        rec = users.get(user)
        vec = alpha * rec.short + (1 - alpha) * rec.long
        top, rows = scanned.search_rows(vec, model.n_candidates)
        assert rows is not None
        assert top == [i for i, _ in scanned.search(vec, model.n_candidates)]
        assert top == [scanned.checkpoint_ids[r] for r in rows.tolist()]
        args = (catalogue, rec.short, rec.long, vec, top, rec.recent, 10, set(rec.recent_items[:2]))
        a, b = model.rank(*args), model.rank(*args, rows)
        assert a.items == b.items and a.candidates == b.candidates
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.features, b.features)
        assert rerank(scanned, rec, alpha, 10, ()).items == model.rank(*args[:6], 10).items
