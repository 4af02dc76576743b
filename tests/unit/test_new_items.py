"""Items born after the checkpoint: the co-occurrence estimator, the encoder hook, the item
index's live items, the record contract and the worker's publisher (no network)."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from model_helpers import synthetic_events, tiny_train_config

from interest_stream import models
from interest_stream.api.item_consumer import ItemVectorsConsumer
from interest_stream.core.events import EVENT_TYPES, Event, Interaction
from interest_stream.core.new_items import (
    ItemVectorRecord,
    MalformedItemRecord,
    NewItemEstimator,
    NewItemParams,
    new_item_codes,
)
from interest_stream.core.settings import Settings
from interest_stream.index.item_index import ItemIndex, write_item_vectors
from interest_stream.models import InterestModel
from interest_stream.models.new_items_eval import estimator_for
from interest_stream.streams.new_items import NewItemPublisher
from interest_stream.streams.window import BehaviorWindow, WindowConfig


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> InterestModel:
    """A tiny checkpoint trained on synthetic events (a few seconds)."""
    out = tmp_path_factory.mktemp("ckpt") / "model"
    models.train(synthetic_events(seed=5), out, tiny_train_config(), progress=False)
    return InterestModel.load(out, device="cpu")


def test_pairs_are_weighted_by_type_and_distance() -> None:
    out = np.eye(3, dtype=np.float32)
    est = NewItemEstimator(["a", "b", "c"], out, params=NewItemParams(window=2, decay=0.5))
    seq = [("a", "view", 1), ("b", "purchase", 2), ("x", "view", 3), ("c", "view", 4)]
    assert est.observe(seq, range(4)) == {"x"}
    # x: b at distance 1 (purchase 2.5), a at distance 2 (view 1 x 0.5), c at 1 (x's view 1)
    assert est.evidence["x"] == pytest.approx({"b": 2.5, "a": 0.5, "c": 1.0})
    got = est.vectors()
    assert got.ids == ["x"]
    np.testing.assert_allclose(got.out[0], np.array([0.5, 2.5, 1.0]) / 4.0, rtol=1e-6)
    assert est.weight("x") == pytest.approx(4.0)
    # observing the same positions again counts again: callers pass only new events
    est.observe(seq, [3])
    assert est.weight("x") == pytest.approx(5.0)


def test_support_category_prior_and_a_new_checkpoint() -> None:
    out = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    est = NewItemEstimator(
        ["a", "b", "c"], out, params=NewItemParams(window=1, min_support=2.0, prior=1.0),
        categories={"a": "k1", "b": "k2", "c": "k2"},
    )  # fmt: skip
    est.observe([("a", "view", 1), ("x", "view", 2)], [1])
    assert est.vectors().ids == []  # weight 1 < min_support, no category
    est.set_category("y", "k2")  # an item feed: category only
    got = est.vectors()
    assert got.ids == ["y"]
    np.testing.assert_allclose(got.out[0], [0.0, 2.0])  # the mean of k2's items
    est.set_category("x", "k1")  # (1 x a + 1 x mean(k1)) / 2
    np.testing.assert_allclose(est.vectors(["x"]).out[0], [1.0, 0.0])
    # a checkpoint that knows x: x leaves; y is re-averaged over the new vectors
    est.set_model(["a", "x"], np.array([[2.0, 0.0], [0.0, 5.0]], np.float32), None, {"x": "k2"})
    assert "x" not in est.evidence
    np.testing.assert_allclose(est.vectors().out[0], [0.0, 5.0])


def test_codes_are_fixed_per_item_and_land_in_the_revisit_slice() -> None:
    a, b = new_item_codes(["n1", "n2"], 8), new_item_codes(["n1"], 8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], a[1])
    est = NewItemEstimator(["k"], np.ones((1, 10), np.float32), codes=(2, 8))
    est.observe([("k", "view", 1), ("n1", "view", 2)], [1])
    got = est.vectors()
    np.testing.assert_allclose(got.out[0, :2], [1.0, 1.0])
    np.testing.assert_array_equal(got.out[0, 2:], a[0])


def test_estimator_over_a_real_model_and_the_encoder_hook(model: InterestModel) -> None:
    est = estimator_for(model, NewItemParams(window=1))
    known = model.item_ids[0]
    est.observe([(known, "view", 1), ("brand-new", "view", 2)], [1])
    got = est.vectors()
    assert got.ids == ["brand-new"]
    np.testing.assert_allclose(got.out[0], model.item_vectors()[0], rtol=1e-5)
    # the new item's estimated input = the known item's input: the short vector is then
    # the one of the same history with the known item in its place (not the OOV's)
    hist = [Interaction(model.item_ids[3], "view", 1_000), Interaction("brand-new", "view", 2_000)]
    twin = [hist[0], Interaction(known, "view", 2_000)]
    oov = model.encode_short([hist])
    model.set_extra_items(got.ids, got.inp)
    try:
        np.testing.assert_allclose(
            model.encode_short([hist]), model.encode_short([twin]), atol=1e-5
        )
        assert not np.allclose(model.encode_short([hist]), oov, atol=1e-4)
        long_states, _ = model.encode_long_states([hist], [None])
        np.testing.assert_allclose(long_states, model.encode_long([hist]), atol=1e-4)
    finally:
        model.set_extra_items([], np.zeros((0, got.inp.shape[1])))
    np.testing.assert_allclose(model.encode_short([hist]), oov, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_item_index_adds_updates_and_withdraws_new_items(backend: str) -> None:
    rng = np.random.default_rng(7)
    print("seed 7")
    vecs = rng.standard_normal((50, 8)).astype(np.float32)
    index = ItemIndex([f"i{k}" for k in range(50)], vecs, model_version="m1", backend=backend)
    far = np.full(8, 10.0, np.float32)

    def rec(item: str, version: int, vec: np.ndarray | None, mv: str = "m1") -> ItemVectorRecord:
        return ItemVectorRecord(item, mv, version, vec, 1.0, "cat")

    assert index.apply_new_items([rec("n1", 5, far), rec("i3", 5, far), rec("n2", 5, far, "m0")])
    assert index.new_items() == ["n1"] and "n1" in index and "n2" not in index
    np.testing.assert_array_equal(index.vector("i3"), vecs[3])  # the checkpoint's own stays
    assert index.search(far, 1)[0][0] == "n1"  # recommendable
    assert index.category("n1") == "cat"
    index.apply_new_items([rec("n1", 4, -far)])  # older: ignored
    assert index.search(far, 1)[0][0] == "n1"
    index.apply_new_items([rec("n1", 6, -far)])  # newer: replaces
    assert index.search(far, 1)[0][0] != "n1"
    index.apply_new_items([rec("n1", 7, None)])  # withdrawn
    assert "n1" not in index and index.new_items() == [] and index.count() == 50
    assert index.stats()["new_items"] == 0


def test_records_round_trip_and_the_consumer_replays_on_a_new_checkpoint() -> None:
    r = ItemVectorRecord("n1", "m2", 9, np.arange(4, dtype=np.float32), 2.5, None)
    back = ItemVectorRecord.from_json(r.to_json())
    assert (back.item_id, back.model_version, back.version, back.weight) == ("n1", "m2", 9, 2.5)
    np.testing.assert_array_equal(back.vector, r.vector)
    with pytest.raises(MalformedItemRecord):
        ItemVectorRecord.from_json(b'{"item_id": "n1"}')
    with pytest.raises(MalformedItemRecord):
        ItemVectorRecord.from_json(
            json.dumps({**json.loads(r.to_json()), "vector": [1, None]}).encode()
        )

    vecs = np.eye(4, dtype=np.float32)
    holder = {"items": ItemIndex(list("abcd"), vecs, model_version="m1", backend="numpy")}
    consumer = ItemVectorsConsumer(Settings(), lambda: holder["items"])
    assert consumer.apply([r.to_json(), b"{bad", None]) == 0  # m2 vectors, m1 index
    assert consumer.malformed == 1
    holder["items"] = ItemIndex(list("abcd"), vecs, model_version="m2", backend="numpy")
    assert consumer.apply([]) == 1  # the kept record lands in the new checkpoint's index
    assert "n1" in holder["items"]


def test_publisher_publishes_only_changed_items_and_follows_a_new_checkpoint(
    tmp_path: Path,
) -> None:
    ids = [f"k{i}" for i in range(5)]
    write_item_vectors(tmp_path / "m", ids, np.eye(5, dtype=np.float32), model_version="v1")
    sent: list[tuple[bytes, bytes | None]] = []

    async def publish(records: list[tuple[bytes, bytes | None]]) -> None:
        sent.extend(records)

    pub = NewItemPublisher(tmp_path / "m", publish, NewItemParams(window=2), interval_s=0.0)
    w = BehaviorWindow("u1", WindowConfig())
    for k, item in enumerate(["k1", "new-1", "k2"]):
        w.fresh = []  # as the worker records a batch
        w.apply(Event("u1", item, EVENT_TYPES[0], 1_700_000_000_000 + k), "events.view", 0, k)
        pub.observe({"u1": w})
    w.fresh = None
    assert asyncio.run(pub.maybe_publish()) == 1
    got = ItemVectorRecord.from_json(sent[0][1] or b"")
    assert sent[0][0] == b"new-1" and got.model_version == "v1"
    np.testing.assert_allclose(got.vector, [0, 0.5, 0.5, 0, 0], atol=1e-6)
    pub.observe({"u1": w})  # nothing new in the window
    assert asyncio.run(pub.maybe_publish()) == 0
    write_item_vectors(tmp_path / "m", ids, 2 * np.eye(5, dtype=np.float32), model_version="v2")
    assert pub.follow("v2") and not pub.follow("v2")
    assert asyncio.run(pub.maybe_publish()) == 1
    again = ItemVectorRecord.from_json(sent[-1][1] or b"")
    assert again.model_version == "v2"
    np.testing.assert_allclose(again.vector, [0, 1.0, 1.0, 0, 0], atol=1e-6)
    # the worker's path: the folder is read in a thread, the estimator swapped on the loop
    write_item_vectors(tmp_path / "m", ids, 3 * np.eye(5, dtype=np.float32), model_version="v3")
    assert asyncio.run(pub.follow_async("v3")) and not asyncio.run(pub.follow_async("v3"))
    assert pub.model_version == "v3" and asyncio.run(pub.maybe_publish()) == 1
    third = ItemVectorRecord.from_json(sent[-1][1] or b"")
    assert third.model_version == "v3"
    np.testing.assert_allclose(third.vector, [0, 1.5, 1.5, 0, 0], atol=1e-6)


def test_publisher_reads_only_the_window_tail_and_counts_what_a_full_pass_counts(
    tmp_path: Path,
) -> None:
    """Batches of events observed through the worker's windows give the evidence that one
    pass over the whole history gives (the publisher reads only the new events' tail)."""
    seed = 7
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    ids = [f"k{i}" for i in range(6)]
    write_item_vectors(tmp_path / "m", ids, np.eye(6, dtype=np.float32), model_version="v1")

    async def publish(records: list[tuple[bytes, bytes | None]]) -> None:
        return None

    params = NewItemParams(window=3)
    pub = NewItemPublisher(tmp_path / "m", publish, params, interval_s=0.0)
    w = BehaviorWindow("u1", WindowConfig())
    seq = [str(rng.choice([*ids, "n1", "n2", "n3"])) for _ in range(40)]
    k = 0
    while k < len(seq):
        step = int(rng.integers(1, 6))
        w.fresh = []
        for j in range(k, min(k + step, len(seq))):
            w.apply(Event("u1", seq[j], EVENT_TYPES[j % 5], 1_700_000_000_000 + j), "e", 0, j)
        pub.observe({"u1": w})
        k += step
    full = NewItemEstimator(ids, np.eye(6, dtype=np.float32), None, params)
    history = [(i, EVENT_TYPES[j % 5], j) for j, i in enumerate(seq)]
    full.observe(history, range(len(seq)))
    assert pub.estimator.evidence.keys() == full.evidence.keys() and full.evidence
    for item, ev in full.evidence.items():
        assert pub.estimator.evidence[item] == pytest.approx(ev)


@pytest.mark.parametrize("offset", range(3))
def test_publisher_counts_events_that_arrive_out_of_time_order(tmp_path: Path, offset: int) -> None:
    """One topic per event type, read in any interleaving and batch size (as the worker
    reads them): every new item next to a known one in the user's time-ordered history
    has that pair's evidence, whatever the order of arrival (an event that arrives after
    later-dated ones lands in the middle of the window)."""
    from pressure import test_seed

    seed = test_seed(offset)
    rng = np.random.default_rng(seed)
    ids = [f"k{i}" for i in range(6)]
    write_item_vectors(tmp_path / "m", ids, np.eye(6, dtype=np.float32), model_version="v1")

    async def publish(records: list[tuple[bytes, bytes | None]]) -> None:
        return None

    pub = NewItemPublisher(tmp_path / "m", publish, NewItemParams(window=3), interval_s=0.0)
    seq = [(str(rng.choice([*ids, "n1", "n2", "n3", "n4"])), int(rng.integers(0, 5)))
           for _ in range(60)]  # fmt: skip
    topics: dict[int, list[int]] = {}
    for j, (_, t) in enumerate(seq):
        topics.setdefault(t, []).append(j)  # each topic in time order, as produced
    w = BehaviorWindow("u1", WindowConfig())
    while any(topics.values()):
        w.fresh = []  # one worker batch
        for _ in range(int(rng.integers(1, 8))):
            live = [t for t, q in topics.items() if q]
            if not live:
                break
            j = topics[int(rng.choice(live))].pop(0)
            item, t = seq[j]
            w.apply(Event("u1", item, EVENT_TYPES[t], 1_700_000_000_000 + j), f"e{t}", 0, j)
        pub.observe({"u1": w})
        w.fresh = None
    assert w.items == [item for item, _ in seq]  # the window is in time order
    ev = pub.estimator.evidence
    for (a, _), (b, _) in itertools.pairwise(seq):
        if a != b and (a in ids) != (b in ids):
            new, old = (b, a) if a in ids else (a, b)
            assert old in ev.get(new, {}), (seed, new, old)
