"""Items born after the checkpoint as the live encoder's input: the publisher estimates
their input embeddings from the checkpoint's, and the encoder child (or an in-process
model) encodes them from those rows instead of the OOV row — also after the child is
replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_helpers import synthetic_events, tiny_train_config

from interest_stream import models
from interest_stream.core.events import EVENT_TYPES, Event, Interaction
from interest_stream.core.new_items import NewItemParams
from interest_stream.models import InterestModel
from interest_stream.models.encoder_process import ProcessEncoder
from interest_stream.models.extra_items import known_inputs, update_in_process
from interest_stream.streams.new_items import NewItemPublisher
from interest_stream.streams.window import BehaviorWindow, WindowConfig

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "m"
    models.train(synthetic_events(seed=4), out, tiny_train_config(epochs=1), progress=False)
    return out


def _history(items: list[str]) -> list[Interaction]:
    return [Interaction(i, "view", T0 + k * 60_000) for k, i in enumerate(items)]


def test_the_publisher_feeds_estimated_inputs_that_the_child_encodes(checkpoint: Path) -> None:
    model = InterestModel.load(checkpoint, device="cpu")
    known = model.item_ids[:6]
    fed: list[tuple[list[str], np.ndarray]] = []
    enc = ProcessEncoder(checkpoint, "cpu", threads=1)
    try:

        async def publish(records: Any) -> None:
            return None

        async def on_inputs(ids: Any, inputs: Any) -> None:
            fed.append((list(ids), np.asarray(inputs)))
            enc.update_extra_items(ids, inputs)

        pub = NewItemPublisher(
            checkpoint, publish, NewItemParams(window=3, min_support=0.1), interval_s=0.0,
            on_inputs=on_inputs, known_inputs=enc.known_item_inputs,
        )  # fmt: skip
        w = BehaviorWindow("u1", WindowConfig())
        w.fresh = []  # one batch, recorded as the worker does
        seq = [known[0], known[1], "new-1", known[2], "new-2", known[3]]
        for k, item in enumerate(seq):
            w.apply(Event("u1", item, EVENT_TYPES[0], T0 + k), "events.view", 0, k)
        pub.observe({"u1": w})
        history = _history(seq)
        before = enc.encode_short([history])
        assert asyncio.run(pub.maybe_publish()) == 2
        ids, inputs = fed[0]
        assert sorted(ids) == ["new-1", "new-2"]
        # the estimate is the pair-weighted mean of the known items' input rows: inside
        # their span, and not the OOV row
        names, table = known_inputs(model)
        rows = table[[names.index(i) for i in known[:4]]]
        assert inputs.shape == (2, rows.shape[1])
        assert np.all(inputs >= rows.min(0) - 1e-6) and np.all(inputs <= rows.max(0) + 1e-6)
        after = enc.encode_short([history])
        assert not np.allclose(before, after, atol=1e-5)
        model.set_extra_items(ids, inputs)
        np.testing.assert_allclose(after, model.encode_short([history]), atol=1e-5)
        np.testing.assert_allclose(
            enc.encode_long([history]), model.encode_long([history]), atol=1e-5
        )
        # a replaced child gets every extra item again
        child = next(iter(enc._pool._processes))  # type: ignore[union-attr]
        os.kill(child, signal.SIGKILL)
        np.testing.assert_allclose(enc.encode_short([history]), after, atol=1e-5)
    finally:
        enc.close()


def test_updates_merge_in_process_and_unknown_rows_stay_oov(checkpoint: Path) -> None:
    model = InterestModel.load(checkpoint, device="cpu")
    ref = InterestModel.load(checkpoint, device="cpu")
    dim = known_inputs(model)[1].shape[1]
    rng = np.random.default_rng(3)
    print("seed 3")
    a, b = rng.normal(size=(1, dim)), rng.normal(size=(1, dim))
    history = _history([model.item_ids[0], "new-a", "new-b", "never-estimated"])
    oov = model.encode_short([history])
    assert update_in_process(model, ["new-a"], a) == 1
    assert update_in_process(model, ["new-b"], b) == 2  # merged, not replaced
    ref.set_extra_items(["new-a", "new-b"], np.vstack([a, b]))
    got = model.encode_short([history])
    np.testing.assert_allclose(got, ref.encode_short([history]), atol=1e-5)
    assert not np.allclose(got, oov, atol=1e-5)
    # a known item is never overridden by an extra row
    assert update_in_process(model, [model.item_ids[0]], a) == 3
    np.testing.assert_allclose(model.encode_short([history]), got, atol=1e-5)
