"""The user index: versioned short/long/blend vectors, search, snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interest_stream.core.records import UserRecord
from interest_stream.index import (
    DimensionMismatch,
    FaissConfig,
    IndexNotBuilt,
    SnapshotError,
    UnknownId,
    UserIndex,
)
from interest_stream.index.user_index import blend

DIM = 8


def _vec(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(params=["faiss", "numpy"])
def users(request: pytest.FixtureRequest) -> UserIndex:
    return UserIndex(DIM, backend=request.param, model_version="m1")


def test_upsert_get_and_record(users: UserIndex) -> None:
    rec = {"event_time": 1_700_000_000_000, "updated_at": 1_700_000_000_050, "model_version": "m1",
           "recent_items": ["i1", "i2"], "purchased": ["i9"]}  # fmt: skip
    assert users.upsert("u1", 3, _vec(1), _vec(2), rec)
    got = users.get("u1")
    assert got.version == 3 and got.event_time == rec["event_time"]
    assert got.recent_items == ("i1", "i2") and got.purchased == ("i9",)
    np.testing.assert_array_equal(got.short, _vec(1))
    np.testing.assert_array_equal(got.long, _vec(2))
    d = got.to_dict()
    assert list(d) == ["user_id", "version", "event_time", "updated_at", "model_version",
                       "short", "long"]  # fmt: skip
    assert d["short"] == pytest.approx(_vec(1).tolist())
    assert users.count() == len(users) == 1 and "u1" in users
    np.testing.assert_allclose(
        users.vector("u1", "blend"), blend(_vec(1)[None], _vec(2)[None], 0.5)[0]
    )
    with pytest.raises(UnknownId, match="unknown user 'zz'"):
        users.get("zz")
    with pytest.raises(UnknownId):
        users.vector("zz", "short")
    with pytest.raises(ValueError, match="horizon"):
        users.vector("u1", "medium")


def test_stale_versions_are_ignored(users: UserIndex) -> None:
    assert users.upsert("u1", 5, _vec(1), _vec(2))
    assert not users.upsert("u1", 4, _vec(3), _vec(4))  # older: ignored
    np.testing.assert_array_equal(users.get("u1").short, _vec(1))
    assert users.upsert("u1", 5, _vec(5), _vec(6))  # same version (new model): applied
    assert users.upsert("u1", 6, _vec(7), _vec(8))
    assert users.version("u1") == 6
    np.testing.assert_array_equal(users.get("u1").long, _vec(8))


def test_upsert_many_batch(users: UserIndex) -> None:
    recs = [UserRecord(f"u{i}", 1, _vec(i), _vec(100 + i)) for i in range(100)]
    recs += [UserRecord("u3", 0, _vec(1000), _vec(1000)),  # older than the u3 before it
             UserRecord("u4", 2, _vec(2000), _vec(2000))]  # fmt: skip
    res = users.upsert_many(recs)
    assert res.applied == 100 and res.stale == 2
    np.testing.assert_array_equal(users.get("u3").short, _vec(3))
    np.testing.assert_array_equal(users.get("u4").short, _vec(2000))
    res = users.upsert_many(
        [UserRecord("u5", 0, _vec(1), _vec(1)), UserRecord("new", 0, _vec(1), _vec(1))]
    )
    assert (res.applied, res.stale) == (1, 1)
    assert users.count() == 101


def test_search_by_horizon(users: UserIndex) -> None:
    for i in range(50):
        users.upsert(f"u{i}", 1, _vec(i), _vec(500 + i))
    found, scores = users.search(_vec(7), 3, "short")
    assert found[0][0] == "u7" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    found, _ = users.search(_vec(507), 3, "long")
    assert found[0][0] == "u7"
    q = _vec(999)
    want = max(range(50), key=lambda i: float(q @ (0.5 * _vec(i) + 0.5 * _vec(500 + i))))
    found, _ = users.search(q, 1)  # blend is the default horizon
    assert found == [[f"u{want}"]]
    found, _ = users.search(_vec(7), 3, "short", exclude={"u7"})
    assert "u7" not in found[0]
    with pytest.raises(ValueError, match="horizon"):
        users.search(_vec(1), 3, "week")
    with pytest.raises(DimensionMismatch):
        users.search(np.zeros(DIM + 1), 3, "short")


def test_remove(users: UserIndex) -> None:
    users.upsert("u1", 1, _vec(1), _vec(2))
    users.upsert("u2", 1, _vec(3), _vec(4))
    assert users.remove("u1")
    assert not users.remove("u1")
    assert "u1" not in users and users.count() == 1
    for h in ("short", "long", "blend"):
        assert users.search(_vec(1), 5, h)[0] == [["u2"]]
    assert users.upsert("u1", 0, _vec(1), _vec(2))  # forgotten: any version starts over
    assert users.remove_many(["u1", "u2", "u3"]) == 2 and users.count() == 0


def test_lazy_dimension_and_mismatch() -> None:
    users = UserIndex()
    assert users.dim is None
    assert users.search(np.zeros(5), 3) == ([[]], pytest.approx(np.zeros((1, 0))))
    with pytest.raises(IndexNotBuilt):
        users.index("short")
    users.upsert("u1", 1, _vec(1, 5), _vec(2, 5))
    assert users.dim == 5
    with pytest.raises(DimensionMismatch):
        users.upsert("u2", 1, _vec(1, 6), _vec(2, 6))
    with pytest.raises(DimensionMismatch):
        users.upsert("u2", 1, _vec(1, 5), _vec(2, 6))
    with pytest.raises(ValueError, match="NaN"):
        users.upsert("u2", 1, np.full(5, np.nan), _vec(2, 5))
    assert users.count() == 1


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_snapshot_round_trip(backend: str, tmp_path: Path) -> None:
    users = UserIndex(DIM, backend=backend, model_version="m7", blend_weight=0.7)
    for i in range(30):
        users.upsert(f"u{i}", i, _vec(i), _vec(100 + i),
                     {"event_time": 1000 + i, "updated_at": 2000 + i, "model_version": "m7",
                      "purchased": [f"i{i}"]})  # fmt: skip
    users.remove("u3")
    folder = users.save(tmp_path / "users")
    doc = json.loads((folder / "user_index.json").read_text())
    assert doc["dim"] == DIM and doc["metric"] == "ip" and doc["model_version"] == "m7"
    assert doc["count"] == 29 and doc["record_model_versions"] == {"m7": 29}
    assert "numpy" in doc["libraries"]
    back = UserIndex.load(folder, expect_dim=DIM, backend=backend)
    assert back.count() == 29 and "u3" not in back and back.blend_weight == 0.7
    a, b = users.get("u5"), back.get("u5")
    assert (a.version, a.event_time, a.updated_at, a.model_version, a.purchased) == (
        b.version, b.event_time, b.updated_at, b.model_version, b.purchased)  # fmt: skip
    np.testing.assert_array_equal(a.short, b.short)
    np.testing.assert_allclose(users.vector("u5", "blend"), back.vector("u5", "blend"), atol=1e-6)
    assert not back.upsert("u5", 4, _vec(0), _vec(0))  # versions survive the round trip
    q = _vec(42)
    assert users.search(q, 5, "blend")[0] == back.search(q, 5, "blend")[0]


def test_snapshot_refuses_mismatch(tmp_path: Path) -> None:
    users = UserIndex(DIM)
    users.upsert("u1", 1, _vec(1), _vec(2))
    folder = users.save(tmp_path / "users")
    with pytest.raises(DimensionMismatch, match="dimension 8, expected 16"):
        UserIndex.load(folder, expect_dim=16)
    doc = json.loads((folder / "user_index.json").read_text())
    (folder / "user_index.json").write_text(json.dumps({**doc, "metric": "l2"}))
    with pytest.raises(DimensionMismatch, match="metric"):
        UserIndex.load(folder)
    (folder / "user_index.json").write_text(json.dumps({**doc, "format": "other"}))
    with pytest.raises(SnapshotError, match="not a user-index snapshot"):
        UserIndex.load(folder)
    (folder / "user_index.json").write_text(json.dumps(doc))
    np.save(folder / "short.npy", np.zeros((2, DIM), np.float32))
    with pytest.raises(SnapshotError, match="inconsistent"):
        UserIndex.load(folder)
    with pytest.raises(SnapshotError):
        UserIndex.load(tmp_path / "missing")


def test_empty_snapshot(tmp_path: Path) -> None:
    back = UserIndex.load(UserIndex(DIM).save(tmp_path / "empty"))
    assert back.count() == 0 and back.dim == DIM


def test_grows_to_ivf_through_batches() -> None:
    users = UserIndex(DIM, config=FaissConfig(ivf_min_rows=1500, nprobe=10_000))
    rng = np.random.default_rng(0)
    for start in range(0, 2000, 500):
        s = rng.standard_normal((500, DIM)).astype(np.float32)
        s /= np.linalg.norm(s, axis=1, keepdims=True)
        users.upsert_many([UserRecord(f"u{start + j}", 1, s[j], -s[j]) for j in range(500)])
    sets = users.stats()["sets"]
    assert all(st["kind"] == "ivf" for st in sets.values()), sets
    assert users.search(users.vector("u1999", "short"), 1, "short")[0] == [["u1999"]]


def test_background_rebuild_keeps_writes_and_searches_going() -> None:
    users = UserIndex(
        DIM, config=FaissConfig(ivf_min_rows=1500, nprobe=10_000), background_rebuild=True
    )
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((3000, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for start in range(0, 3000, 250):  # writes go on while the rebuild thread trains
        users.upsert_many(
            [UserRecord(f"u{j}", 1, vecs[j], -vecs[j]) for j in range(start, start + 250)]
        )
        # every user written so far is found exactly, whatever structure serves
        probe = start + 249
        assert users.search(vecs[probe], 1, "short")[0] == [[f"u{probe}"]]
    assert users.wait_rebuilds(timeout=120)
    sets = users.stats()["sets"]
    assert all(st["kind"] == "ivf" and st["count"] == 3000 for st in sets.values()), sets
    for j in (0, 1499, 2999):  # journaled writes made during training are in the new structure
        assert users.search(vecs[j], 1, "short")[0] == [[f"u{j}"]]
        assert users.search(-vecs[j], 1, "long")[0] == [[f"u{j}"]]


def test_held_rebuilds_run_on_release() -> None:
    users = UserIndex(DIM, config=FaissConfig(ivf_min_rows=1000, nprobe=10_000))
    users.hold_rebuilds(True)
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((1500, DIM)).astype(np.float32)
    users.upsert_many([UserRecord(f"u{j}", 1, vecs[j], vecs[j]) for j in range(1500)])
    assert {st["kind"] for st in users.stats()["sets"].values()} == {"flat"}
    users.hold_rebuilds(False)
    assert {st["kind"] for st in users.stats()["sets"].values()} == {"ivf"}


def test_big_batches_are_written_in_chunks() -> None:
    users = UserIndex(DIM, backend="numpy", write_chunk=7)
    recs = [UserRecord(f"u{i}", 2, _vec(i), _vec(i + 1)) for i in range(50)]
    recs.append(UserRecord("u3", 1, _vec(0), _vec(0)))  # superseded within the batch
    res = users.upsert_many(recs)
    assert (res.applied, res.stale) == (50, 1) and users.count() == 50
    assert sorted(res.applied_ids) == sorted(f"u{i}" for i in range(50))
    np.testing.assert_array_equal(users.get("u3").short, _vec(3))
    res = users.upsert_many([UserRecord(f"u{i}", 1, _vec(0), _vec(0)) for i in range(20)])
    assert (res.applied, res.stale) == (0, 20)
    with pytest.raises(ValueError, match="write_chunk"):
        UserIndex(DIM, write_chunk=0)
