"""The re-encode loop with an incremental encoder: states are cached, reused, invalidated.

A fake encoder whose state is "the events folded so far" checks the bookkeeping (which
state goes back to the model, a model swap or a forget drops it); a tiny trained model
checks that the published long vectors equal a full re-encode of the window.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from model_helpers import synthetic_events, tiny_train_config

from interest_stream import models
from interest_stream.core.events import Event, Interaction
from interest_stream.models import InterestModel
from interest_stream.streams.reencode import Reencoder
from interest_stream.streams.window import BehaviorWindow, WindowConfig

DIM = 4
T0 = 1_512_000_000_000


def window(user: str, items: Sequence[tuple[str, str]]) -> BehaviorWindow:
    w = BehaviorWindow(user, WindowConfig())
    for k, (item, etype) in enumerate(items):
        w.apply(Event(user, item, etype, T0 + k * 1000), "t", 0, k)
    return w


class Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def __call__(self, out: Sequence[tuple[bytes, bytes | None]]) -> None:
        self.records.extend(json.loads(v) for _, v in out if v is not None)


class FoldingEncoder:
    """``encode_long_states``: records the state it was given; the new state is the length."""

    dim = DIM

    def __init__(self, version: str = "fold-1") -> None:
        self.model_version = version
        self.given: list[Any] = []

    def encode_short(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        return np.ones((len(histories), DIM), dtype=np.float32)

    def encode_long(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        return np.array([[len(h)] * DIM for h in histories], dtype=np.float32)

    def encode_long_states(
        self, histories: Sequence[Sequence[Interaction]], states: Sequence[Any]
    ) -> tuple[np.ndarray, list[Any]]:
        self.given.extend(states)
        return self.encode_long(histories), [(self.model_version, len(h)) for h in histories]


def test_states_go_back_to_the_model_and_die_with_a_swap_or_forget(tmp_path: Path) -> None:
    async def run() -> FoldingEncoder:
        enc = FoldingEncoder()
        r = Reencoder(enc, Sink(), flush_ms=1, long_refresh_s=0.0, loader=lambda _: enc2)
        await r.submit({"a": window("a", [("x", "view")])})
        await r.flush_once()
        await r.submit({"a": window("a", [("x", "view"), ("y", "view")])})
        await r.flush_once()
        assert enc.given == [None, ("fold-1", 1)]
        (tmp_path / "config.json").write_text('{"model_version": "fold-2"}')
        assert await r.maybe_reload(tmp_path)
        await r.submit({"a": window("a", [("x", "view")] * 3)})
        await r.flush_once()
        assert enc2.given == [None]  # the old model's state is never given to the new one
        r.forget("a")
        await r.submit({"a": window("a", [("x", "view")] * 4)})
        await r.flush_once()
        assert enc2.given == [None, None]
        return enc

    enc2 = FoldingEncoder("fold-2")
    asyncio.run(run())


def test_a_flush_of_a_swapped_out_model_caches_nothing() -> None:
    async def run() -> Reencoder:
        enc = FoldingEncoder()
        r = Reencoder(enc, Sink(), flush_ms=1)
        r.model = FoldingEncoder("fold-2")  # as if swapped while the flush encoded
        r._remember_long([("a", None)], np.zeros((1, DIM)), [0], [("fold-1", 1)], "fold-1")  # type: ignore[list-item]
        return r

    assert len(asyncio.run(run())._long) == 0


def test_published_long_vectors_equal_a_full_re_encode(tmp_path: Path) -> None:
    models.train(synthetic_events(seed=5), tmp_path / "m", tiny_train_config(), progress=False)
    model = InterestModel.load(tmp_path / "m", device="cpu")
    sink = Sink()

    async def run() -> Reencoder:
        r = Reencoder(model, sink, flush_ms=1, long_refresh_s=0.0)
        items = [(model.item_ids[k % 30], "view" if k % 3 else "cart") for k in range(12)]
        for n in range(1, 13):
            await r.submit({"a": window("a", items[:n]), "b": window("b", items[: n // 2 + 1])})
            await r.flush_once()
        return r

    r = asyncio.run(run())
    last = {rec["user_id"]: rec for rec in sink.records}
    items = [(model.item_ids[k % 30], "view" if k % 3 else "cart") for k in range(12)]
    for user, n in (("a", 12), ("b", 7)):
        want = model.encode_long([window(user, items[:n]).long()])[0]
        assert np.abs(np.asarray(last[user]["long"]) - want).max() < 2e-4
    paths = r.metrics.long_paths
    assert paths.labels("incremental")._value.get() == 24
    assert paths.labels("full")._value.get() == 0
