"""The encoder child process gives the in-process model's vectors and fails clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_helpers import synthetic_events, tiny_train_config

from interest_stream import models
from interest_stream.core.events import Interaction
from interest_stream.models.encoder_process import EncoderProcessError, ProcessEncoder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "m"
    # a short window other than the default: the child and the parent must both report it
    cfg = tiny_train_config(epochs=1, short_window_events=20, short_window_minutes=12.0)
    models.train(synthetic_events(seed=2), out, cfg, progress=False)
    return out


def test_same_vectors_as_the_model_in_process(checkpoint: Path) -> None:
    model = models.InterestModel.load(checkpoint, device="cpu")
    items = model.item_ids[:30]
    t0 = 1_512_000_000_000

    def history(u: int) -> list[Interaction]:
        kinds = ("cart", "view", "view")
        return [
            Interaction(items[(u + k) % 30], kinds[k % 3], t0 + k * 60_000)
            for k in range(u % 25 + 1)
        ]

    histories = [history(u) for u in range(40)]
    enc = ProcessEncoder(checkpoint, "cpu", threads=1)
    try:
        assert enc.model_version == model.model_version and enc.dim == model.dim
        assert enc.short_window_spec == model.short_window_spec == (20, 12.0)
        np.testing.assert_allclose(
            enc.encode_short(histories), model.encode_short(histories), atol=1e-5
        )
        np.testing.assert_allclose(
            enc.encode_long(histories), model.encode_long(histories), atol=1e-5
        )
        assert enc.encode_short([]).shape == (0, model.dim)
    finally:
        enc.close()
    with pytest.raises(EncoderProcessError, match="closed"):
        enc.encode_short(histories[:1])


def test_a_bad_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderProcessError, match="could not load"):
        ProcessEncoder(tmp_path, "cpu")


def test_long_states_through_the_child_without_torch_in_the_parent(checkpoint: Path) -> None:
    """States round-trip through the pipe; unpickling them never imports torch here."""
    import subprocess
    import sys

    code = f"""
import sys
from interest_stream.core.events import Interaction
from interest_stream.models.encoder_process import ProcessEncoder
enc = ProcessEncoder({str(checkpoint)!r}, "cpu", threads=1)
h = [Interaction("i1", "view", 1_512_000_000_000 + k * 1000) for k in range(5)]
v1, s1 = enc.encode_long_states([h[:4]], [None])
v2, s2 = enc.encode_long_states([h], s1)
full = enc.encode_long([h])
enc.close()
assert s2[0].n == 5 and abs(v2 - full).max() < 2e-4, (s2, abs(v2 - full).max())
assert "torch" not in sys.modules, "the worker process imported torch"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_explanations_await_the_child_directly(checkpoint: Path) -> None:
    """The explainer awaits the child's future (``submit_variants_many``, no thread hop)
    and gets the in-process model's explanation; the child runs at the niceness asked."""
    import asyncio
    import os

    from interest_stream.core.events import Event
    from interest_stream.streams.explain import Explainer
    from interest_stream.streams.window import BehaviorWindow, WindowConfig

    model = models.InterestModel.load(checkpoint, device="cpu")
    items = model.item_ids[:30]
    window = BehaviorWindow("u", WindowConfig())
    for k in range(70):  # newest 50 alone, the 20 older ones as the group
        kind = ("view", "cart", "view", "purchase")[k % 4]
        window.apply(Event("u", items[(k * 7) % 30], kind, 1_512_000_000_000 + k * 90_000))
    targets = model.item_vectors()[:3]
    enc = ProcessEncoder(checkpoint, "cpu", threads=1, nice=3)  # the explainer's niceness
    child_pid = next(iter(enc._pool._processes))  # type: ignore[union-attr]
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, child_pid) == min(19, mine + 3)
    submitted: list[int] = []
    submit = enc.submit_variants_many

    def spy(jobs: list) -> object:
        submitted.append(len(jobs))
        return submit(jobs)

    enc.submit_variants_many = spy  # type: ignore[method-assign]
    try:
        child = asyncio.run(Explainer(lambda: enc, cache_users=0).explain(window, targets, top=4))
    finally:
        enc.close()
    local = asyncio.run(Explainer(lambda: model, cache_users=0).explain(window, targets, top=4))
    assert submitted == [1]
    assert child["older_events"] == local["older_events"] == 20
    for a, b in zip(child["results"], local["results"], strict=True):
        assert [e.get("ts") for e in a["events"]] == [e.get("ts") for e in b["events"]]
        np.testing.assert_allclose([e["delta"] for e in a["events"]],
                                   [e["delta"] for e in b["events"]], atol=1e-4)  # fmt: skip
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
