"""Evaluation protocol, metrics, baselines and the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from model_helpers import synthetic_events, tiny_train_config

from interest_stream import models
from interest_stream.models.baselines import Baselines
from interest_stream.models.config import TaskKind
from interest_stream.models.metrics import bootstrap_ci, paired_ratio_ci, rank_metrics
from interest_stream.models.split import cutoff_time, make_split

T0 = 1_512_000_000_000
H = 3_600_000


def _events(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])


def test_rank_metrics_known_values() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = [np.array([1, 3])]  # ranks 2 and 4
    m = rank_metrics(lambda idx: scores[idx], np.array([0]), targets)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@10"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg)
    assert m["recall@10"][0] == 1.0 and m["mrr"][0] == 0.5
    # excluding items moves the targets up
    m2 = rank_metrics(lambda idx: scores[idx], np.array([0]), targets, exclude=[np.array([0])])
    assert m2["mrr"][0] == 1.0


def test_recall_at_k_counts_only_the_top_k() -> None:
    scores = -np.arange(30, dtype=float)[None, :]  # item i has rank i + 1
    m = rank_metrics(lambda idx: scores[idx], np.array([0]), [np.array([5, 15, 25])])
    assert m["recall@10"][0] == pytest.approx(1 / 3)
    assert m["recall@20"][0] == pytest.approx(2 / 3)


def test_bootstrap_intervals() -> None:
    v = np.random.default_rng(0).random(200)
    mean, lo, hi = bootstrap_ci(v, 500, seed=1)
    assert lo < mean < hi and mean == pytest.approx(v.mean())
    r, rlo, rhi = paired_ratio_ci(2 * v, v, 200, seed=1)
    assert r == pytest.approx(2.0) and rlo == pytest.approx(2.0) and rhi == pytest.approx(2.0)


def test_split_is_temporal_and_targets_are_defined() -> None:
    ev = _events(
        [
            ("u1", "a", "view", T0),
            ("u1", "b", "view", T0 + H),
            ("u1", "a", "view", T0 + 10 * H),
            ("u1", "c", "view", T0 + 11 * H),
            ("u1", "z", "view", T0 + 12 * H),
            ("u2", "c", "view", T0 + 2 * H),
            ("u2", "b", "cart", T0 + 3 * H),
            ("u3", "a", "view", T0 + 11 * H),  # only after the cutoff: not a test user
        ]
    )
    split = make_split(ev, T0 + 5 * H)
    assert split.users == ["u1"]
    assert split.candidates == ["a", "b", "c"]  # z is unknown at the cutoff
    assert [e.item_id for e in split.histories[0]] == ["a", "b"]
    cols = {c: i for i, c in enumerate(split.candidates)}
    assert sorted(split.targets[TaskKind.ALL][0]) == [cols["a"], cols["c"]]
    assert list(split.targets[TaskKind.NEW][0]) == [cols["c"]]
    assert split.stats["test_events_on_unknown_items"] == 1
    assert all(e.ts < split.cutoff_ts for h in split.histories for e in h)
    horizon = make_split(ev, T0 + 5 * H, horizon_ms=5 * H + 1)
    assert sorted(horizon.targets[TaskKind.ALL][0]) == [cols["a"]]
    assert cutoff_time(ev["ts"], 1.0) > ev["ts"].max()


def test_baselines_rank_as_documented() -> None:
    ev = _events(
        [
            ("u1", "a", "view", T0),
            ("u1", "b", "view", T0 + H),
            ("u1", "a", "view", T0 + 2 * H),
            ("u2", "a", "view", T0 + H),
            ("u2", "c", "view", T0 + 2 * H),
            ("u3", "c", "view", T0 + 3 * H),
            ("u3", "a", "view", T0 + 30 * H),
            ("u1", "c", "view", T0 + 40 * H),
        ]
    )
    split = make_split(ev, T0 + 20 * H)
    base = Baselines(split, recent_days=1.0)
    cols = split.cand_index
    u1 = np.array([split.users.index("u1")])
    pop = base.popularity(u1)[0]
    assert pop[cols["a"]] > pop[cols["c"]] > pop[cols["b"]]
    own = base.repeat_last(u1)[0]
    assert own[cols["a"]] > own[cols["b"]] > own[cols["c"]]  # a touched last, c never
    np.testing.assert_array_equal(base.own_recent(u1), base.repeat_last(u1))  # the old name
    knn = base.item_knn(u1)[0]
    assert knn[cols["c"]] > 0  # c co-occurs with a (u2, u3)
    rec = base.recent_popularity(u1)[0]
    assert rec[cols["c"]] > rec[cols["b"]]  # c: 2 events in the last day


@pytest.fixture(scope="module")
def syn_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    ev = synthetic_events(n_users=80, seed=3)
    out = tmp_path_factory.mktemp("ev") / "model"
    models.train(ev, out, tiny_train_config(epochs=3), progress=False)
    return ev, out


def test_evaluate_report_and_files(syn_model: tuple[pd.DataFrame, Path], tmp_path: Path) -> None:
    ev, ckpt = syn_model
    rep = models.evaluate(
        ev, ckpt, n_bootstrap=100, out_dir=tmp_path, name="syn", dataset="synthetic", device="cpu"
    )
    assert set(rep["tasks"]) == {"all", "new"}
    all_task = rep["tasks"]["all"]
    assert set(all_task["methods"]) == {
        "short",
        "long",
        "blend",
        "popularity",
        "recent_popularity",
        "item_knn",
        "repeat_last",
        "own_recent",  # the old name of repeat_last, kept in the temporal report
    }
    assert all_task["methods"]["own_recent"] == all_task["methods"]["repeat_last"]
    assert all_task["method_aliases"] == {"own_recent": "repeat_last"}
    assert all_task["best_baseline"] != "own_recent"
    assert "repeat_last" not in rep["tasks"]["new"]["methods"]
    assert "own_recent" not in rep["tasks"]["new"]["methods"]
    assert rep["protocol"]["name"] == "temporal"
    assert {"ndcg@20", "mrr@10", "mrr@20", "mrr"} <= set(all_task["methods"]["blend"])
    for m in all_task["methods"].values():
        for fig in m.values():
            lo, hi = fig["ci95"]
            assert lo <= fig["mean"] <= hi
    assert all_task["best_baseline"] in all_task["methods"]
    assert "blend" in all_task["ndcg@10_ratio_vs_best_baseline"]
    saved = json.loads((tmp_path / "quality-syn.json").read_text())
    assert saved["protocol"]["n_bootstrap"] == 100
    md = (tmp_path / "quality-syn.md").read_text()
    assert "| repeat_last |" in md and "own_recent" not in md and "NDCG@20" in md
    png = (tmp_path / "quality-syn.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
