"""Leave-one-out by time (issue #13): the split, training on it, evaluating on it, refusals, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from model_helpers import taobao_slice, tiny_train_config

from interest_stream import models
from interest_stream.cli import main
from interest_stream.core.eventfile import write_events
from interest_stream.models import ModelError
from interest_stream.models import training as training_mod
from interest_stream.models.checkpoint import read_item_ids
from interest_stream.models.config import TaskKind
from interest_stream.models.loo import loo_fingerprint, loo_frame, loo_split
from interest_stream.models.loo_eval import check_loo_checkpoint, evaluate_loo
from interest_stream.models.metrics import rank_metrics

T0 = 1_512_000_000_000
H = 3_600_000
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20")


def _hand_events() -> pd.DataFrame:
    """Six users; u4 has two events (dropped); u3's three events share one time."""
    rows = [
        *[("u1", i, T0 + k * H) for k, i in enumerate("abcab", start=1)],
        *[("u2", i, T0 + k * H) for k, i in enumerate("cdce", start=1)],
        ("u3", "a", T0 + 3 * H), ("u3", "d", T0 + 3 * H), ("u3", "c", T0 + 3 * H),
        ("u4", "a", T0 + H), ("u4", "zz", T0 + 2 * H),
        *[("u5", i, T0 + (10 + k) * H) for k, i in enumerate("ababcdae")],
        *[("u6", f"f{k:02d}", T0 + (20 + k) * H) for k in range(12)],
        ("u6", "a", T0 + 40 * H), ("u6", "f00", T0 + 41 * H),
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    df["event_type"] = "view"
    return df[["user_id", "item_id", "event_type", "ts"]]


def test_frame_roles_follow_time_then_row() -> None:
    frame = loo_frame(_hand_events())
    assert "u4" not in set(frame["user_id"])  # < 3 events
    u3 = frame[frame["user_id"] == "u3"]
    assert list(zip(u3["item_id"], u3["role"], strict=True)) == [
        ("a", "train"), ("d", "valid"), ("c", "test"),
    ]  # fmt: skip
    split = loo_split(frame, "test")
    k = split.users.index("u3")
    assert [e.item_id for e in split.histories[k]] == ["a", "d"]
    assert split.candidates == ["a", "b", "c", "d", "e", *[f"f{i:02d}" for i in range(12)]]
    valid = loo_split(frame, "valid", candidates=["a", "b", "c", "d", *split.candidates[5:]])
    k = valid.users.index("u2")
    assert [e.item_id for e in valid.histories[k]] == ["c", "d"]
    assert list(valid.targets[TaskKind.ALL][k]) == [valid.cand_index["c"]]
    assert len(valid.targets[TaskKind.NEW][k]) == 0  # c is in u2's history


def test_mrr_and_ndcg_at_20() -> None:
    scores = -np.arange(30, dtype=float)[None, :]  # item i has rank i + 1
    m = rank_metrics(lambda idx: scores[idx], np.array([0]), [np.array([14])])
    assert m["recall@10"][0] == 0 and m["recall@20"][0] == 1
    assert m["ndcg@10"][0] == 0 and m["ndcg@20"][0] == pytest.approx(1 / math.log2(16))
    assert m["mrr@10"][0] == 0 and m["mrr@20"][0] == pytest.approx(1 / 15)
    assert m["mrr"][0] == pytest.approx(1 / 15)


@pytest.fixture(scope="module")
def hand_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hand") / "model"
    models.train(_hand_events(), out, tiny_train_config(epochs=1, protocol="loo"), progress=False)
    return out


def test_repeat_last_by_hand(hand_model: Path) -> None:
    """Non-test counts: a 7, c 4, b 3, d 3, f00..f11 1 each, e 0 (ties: candidate order).

    repeat_last ranks: u1 (a c b | ...) target b -> 3; u2 (c d | a b f00..f11 e) target
    e -> 17; u3 (d a | c ...) target c -> 3; u5 (a d c b | f.. e) target e -> 17;
    u6 (a f11 ... f00) target f00 -> 13.
    """
    rep = evaluate_loo(_hand_events(), hand_model, n_bootstrap=20, device="cpu")
    res = rep["tasks"]["all"]
    assert res["users"] == 5 and set(res) >= {"methods", "best_baseline"}
    got = {k: v["mean"] for k, v in res["methods"]["repeat_last"].items()}
    ranks = np.array([3, 17, 3, 17, 13])
    assert got["recall@10"] == pytest.approx(0.4) and got["recall@20"] == pytest.approx(1.0)
    assert got["ndcg@10"] == pytest.approx(0.2)
    assert got["ndcg@20"] == pytest.approx(np.mean(1 / np.log2(ranks + 1)))
    assert got["mrr@10"] == pytest.approx(2 / 15)
    assert got["mrr@20"] == pytest.approx(np.mean(1 / ranks))
    # e occurs only as a test target: unknown to the checkpoint, -inf for the model
    assert "e" not in read_item_ids(hand_model)
    assert rep["split"]["targets_known_to_model"] == 3
    assert set(res["methods"]) == {
        "short", "long", "blend", "popularity", "recent_popularity", "item_knn", "repeat_last",
    }  # fmt: skip
    assert rep["protocol"]["name"] == "loo" and set(rep["tasks"]) == {"all"}


@pytest.fixture(scope="module")
def slice_events() -> pd.DataFrame:
    """30 real Taobao users with at least 30 events each."""
    return taobao_slice(n_users=30, min_events=30)


@pytest.fixture(scope="module")
def loo_run(
    slice_events: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Any]]:
    """A tiny model trained with --protocol loo (validation on), and what ``fit`` was given."""
    seen: list[Any] = []
    real_fit = training_mod.fit

    def spy(df: pd.DataFrame, *args: Any, **kwargs: Any) -> Any:
        seen.append((df.copy(), args[4]))  # events, validation split
        return real_fit(df, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(training_mod, "fit", spy)
    out = tmp_path_factory.mktemp("loo") / "model"
    cfg = tiny_train_config(
        epochs=2, protocol="loo", val_fraction=0.1, patience=1, min_epochs=1, refit=True
    )
    try:
        models.train(slice_events, out, cfg, progress=False)
    finally:
        mp.undo()
    return out, seen


def _keys(df: pd.DataFrame) -> list[tuple[str, str, int]]:
    return sorted(zip(df["user_id"], df["item_id"], df["ts"].astype(int), strict=True))


def test_train_loo_never_sees_valid_or_test(
    slice_events: pd.DataFrame, loo_run: tuple[Path, list[Any]]
) -> None:
    ckpt, seen = loo_run
    frame = loo_frame(slice_events)
    train_rows = frame[frame["role"] == "train"]
    assert len(seen) == 1  # no refit under loo: the fit already used every train event
    df, val_split = seen[0]
    assert _keys(df) == _keys(train_rows)  # exactly the train role, nothing else
    assert len(df) == len(frame) - 2 * frame["user_id"].nunique()
    # validation: history = the train events before it, target = the second-last event
    valid = frame[frame["role"] == "valid"].set_index("user_id")
    for k, u in enumerate(val_split.users):
        assert len(val_split.histories[k]) == int((train_rows["user_id"] == u).sum())
        tgt = val_split.targets[TaskKind.ALL][k]
        if len(tgt):
            assert val_split.candidates[tgt[0]] == valid.loc[u, "item_id"]
    held_out_only = set(frame.loc[frame["role"] != "train", "item_id"]) - set(train_rows["item_id"])
    assert held_out_only and not held_out_only & set(read_item_ids(ckpt))
    split = json.loads((ckpt / "config.json").read_text())["split"]
    assert split["protocol"] == "loo" and split["loo"] == loo_fingerprint(frame)
    assert json.loads((ckpt / "config.json").read_text())["train"]["protocol"] == "loo"


def test_refusals(slice_events: pd.DataFrame, loo_run: tuple[Path, list[Any]]) -> None:
    ckpt, _ = loo_run
    # another data set: one user fewer changes the split's fingerprint
    other = slice_events[slice_events["user_id"] != slice_events["user_id"].iloc[0]]
    with pytest.raises(ModelError, match="another data set or split"):
        evaluate_loo(other, ckpt, n_bootstrap=10, device="cpu")
    # the temporal protocol refuses it too (it trained past any 0.8 cutoff)
    with pytest.raises(ModelError, match="--protocol loo"):
        models.evaluate(slice_events, ckpt, n_bootstrap=10, device="cpu")
    # a temporal checkpoint whose training period reaches the test events
    frame = loo_frame(slice_events)
    first_test = int(frame.loc[frame["role"] == "test", "ts"].min())
    temporal = {"split": {"protocol": "temporal", "train_max_ts": first_test}}
    with pytest.raises(ModelError, match="may have trained on the test events"):
        check_loo_checkpoint(temporal, "m", frame, loo_fingerprint(frame))
    temporal["split"]["train_max_ts"] = first_test - 1  # ended before every test event
    check_loo_checkpoint(temporal, "m", frame, loo_fingerprint(frame))


def test_cli_evaluate_loo_json(
    slice_events: pd.DataFrame, loo_run: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    """The shape the RecBole peer harness reads: tasks.all.methods.<method>.<metric>."""
    ckpt, _ = loo_run
    path = write_events(slice_events, tmp_path / "events.csv")
    args = ["evaluate", "--events", str(path), "--model", str(ckpt), "--protocol", "loo"]
    res = CliRunner().invoke(main, [*args, "--json", "--quiet", "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    methods = rep["tasks"]["all"]["methods"]
    for m in ("short", "long", "blend", "repeat_last", "popularity", "item_knn"):
        for k in METRICS:
            lo, hi = methods[m][k]["ci95"]
            assert lo <= methods[m][k]["mean"] <= hi
    md = CliRunner().invoke(main, [*args, "--markdown", "--quiet", "--bootstrap", "20"])
    assert md.exit_code == 0 and "| repeat_last" in md.stdout and "MRR@20" in md.stdout


@pytest.mark.parametrize("verb", ["train", "evaluate"])
def test_cli_protocol_is_validated(verb: str, tmp_path: Path) -> None:
    events = write_events(_hand_events(), tmp_path / "e.csv")
    where = ["--out", str(tmp_path / "m")] if verb == "train" else ["--model", str(tmp_path)]
    res = CliRunner().invoke(main, [verb, "--events", str(events), *where, "--protocol", "lo"])
    assert res.exit_code == 2
    assert "Invalid value for '--protocol'" in res.output and "'temporal', 'loo'" in res.output
