"""The RecBole peer harness without RecBole: export, split check, report (bench/peers/recbole/).

The peer virtualenv is never built here; RecBole's leave-one-out split is mimicked in
:func:`_recbole_like_split` (its sequential augmentation and ``LS: valid_and_test``, as in
RecBole 1.2.1's ``SequentialDataset.data_augmentation`` and ``Dataset.leave_one_out``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from bench.peers.recbole.export import INTER_HEADER, export_atomic
from bench.peers.recbole.ours import our_methods
from bench.peers.recbole.report import markdown_table
from bench.peers.recbole.splitcheck import Example, compare, expected_examples, read_roles
from interest_stream.core.eventfile import read_events, shared_data_dir
from interest_stream.models.loo import loo_frame


def _events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    df["event_type"] = "view"
    return df


EVENTS = _events(
    [
        ("u1", "a", 10), ("u2", "x", 10), ("u1", "b", 10), ("u1", "c", 30), ("u2", "y", 5),
        ("u3", "a", 1), ("u1", "a", 40), ("u2", "z", 50), ("u2", "x", 60), ("u3", "b", 2),
        ("u1", "d", 40),
    ]
)  # fmt: skip


def _read_inter(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    assert tuple(df.columns) == INTER_HEADER
    return df.rename(columns=lambda c: c.split(":")[0])


def _recbole_like_split(inter: pd.DataFrame, max_len: int) -> dict[str, list[Example]]:
    """RecBole's sequential examples and leave-one-out split of an atomic file, by hand."""
    by_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for user, item, ts in inter.itertuples(index=False):
        by_user[user].append((int(float(ts)), item))
    out: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for user, rows in by_user.items():
        rows.sort()
        items = [i for _, i in rows]
        examples = [(user, items[p], rows[p][0], tuple(items[max(0, p - max_len) : p]))
                    for p in range(1, len(rows))]  # fmt: skip
        left = min(2, len(examples) - 1)  # RecBole: legal_leave_one_num
        cut = len(examples) - left
        out["train"] += examples[:cut]
        for i, ex in enumerate(examples[cut:]):
            out[["valid", "test"][2 - left + i]].append(ex)
    return out


def test_export_writes_loo_frame_in_its_order(tmp_path: Path) -> None:
    info = export_atomic(EVENTS, tmp_path, "toy")
    frame = loo_frame(EVENTS)
    inter = _read_inter(Path(info.inter_file))
    assert inter["user_id"].tolist() == frame["user_id"].tolist()
    assert inter["item_id"].tolist() == frame["item_id"].tolist()
    assert inter["timestamp"].astype(int).tolist() == frame["seq"].tolist()
    roles = read_roles(info.roles_file)
    assert [r[3] for r in roles] == frame["role"].tolist()
    assert (info.users, info.events, info.items) == (2, 9, 7)  # u3 has 2 events: left out
    # ties in ts keep file-row order: u1's "a" (row 0) before "b" (row 2); "a"@40 before "d"@40
    u1 = inter[inter["user_id"] == "u1"]["item_id"].tolist()
    assert u1 == ["a", "b", "c", "a", "d"]


def test_recbole_split_of_the_export_equals_loo_frame(tmp_path: Path) -> None:
    info = export_atomic(EVENTS[EVENTS["user_id"] != "u3"], tmp_path, "toy")
    expected = expected_examples(read_roles(info.roles_file), max_len=2)
    observed = _recbole_like_split(_read_inter(Path(info.inter_file)), max_len=2)
    check = compare(expected, observed)
    assert check["equal"], check
    assert sorted((ex[0], ex[1]) for ex in expected["test"]) == [("u1", "d"), ("u2", "x")]
    u1_test = next(ex for ex in expected["test"] if ex[0] == "u1")
    assert u1_test[3] == ("c", "a")  # history capped at max_len, valid item in it


def test_split_check_catches_a_user_with_three_events(tmp_path: Path) -> None:
    """RecBole trains on the validation target of a 3-event user: the check must refuse."""
    three = _events([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 1), ("v", "b", 2),
                     ("v", "c", 3), ("v", "d", 4)])  # fmt: skip
    info = export_atomic(three, tmp_path, "three")
    expected = expected_examples(read_roles(info.roles_file), max_len=50)
    check = compare(expected, _recbole_like_split(_read_inter(Path(info.inter_file)), 50))
    assert not check["equal"]
    assert not check["valid"]["equal"] and not check["train"]["equal"]
    assert check["test"]["equal"]


def test_export_refuses_tabs_in_ids(tmp_path: Path) -> None:
    bad = _events([("u\t1", "a", 1), ("u\t1", "b", 2), ("u\t1", "c", 3)])
    with pytest.raises(ValueError, match="tab"):
        export_atomic(bad, tmp_path, "bad")


def test_export_of_a_shared_slice_matches_loo_frame(tmp_path: Path) -> None:
    path = shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
    if not path.exists():
        pytest.skip("shared data not present")
    events = read_events(path)
    users = sorted(events["user_id"].unique())[:25]
    events = events[events["user_id"].isin(users)]
    info = export_atomic(events, tmp_path, "slice")
    frame = loo_frame(events)
    inter = _read_inter(Path(info.inter_file))
    assert len(inter) == len(frame) == info.events
    assert inter["timestamp"].astype(int).tolist() == frame["seq"].tolist()
    expected = expected_examples(read_roles(info.roles_file), max_len=50)
    assert compare(expected, _recbole_like_split(inter, 50))["equal"]
    tests = frame[frame["role"] == "test"].set_index("user_id")["item_id"]
    assert {u: i for u, i, _, _ in expected["test"]} == tests.to_dict()


def test_report_table_has_ours_beside_theirs() -> None:
    report = {"tasks": {"all": {"methods": {
        "blend": {"ndcg@10": {"mean": 0.05, "ci95": [0.04, 0.06]}, "recall@10": {"mean": 0.1}},
        "repeat_last": {"ndcg@10": {"mean": 0.02}},
    }}}}  # fmt: skip
    methods = our_methods(report)
    assert methods["blend"] == {"ndcg@10": 0.05, "recall@10": 0.1}
    fit = {"train_seconds": 61.0, "epochs": 7, "best_epoch": 4, "stopped_by": "budget"}
    results = {
        "run": {"budget_minutes": 1.0, "seed": 0, "threads": 2, "started_utc": "t0",
                "finished_utc": "t1", "machine": {"cpu_count": 2},
                "load": {"mean_1min": 1.5, "max_1min": 2.0}},
        "datasets": {"toy": {
            "export": {"users": 3},
            "peers": {"models": {"SASRec": {"fit": fit, "test": {"ndcg@10": 0.04}}}},
            "ours": {"methods": methods, "train_seconds": 50.0, "epochs": 5},
        }},
    }  # fmt: skip
    table = markdown_table(results)
    assert "| toy (3 users) | RecBole SASRec | – | 0.0400 |" in table
    assert "|  | interest-stream blend | 0.1000 | 0.0500 |" in table
    assert "blend 1.25x" in table and "load average" in table
