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
    models.train(synthetic_events(seed=2), out, tiny_train_config(epochs=1), progress=False)
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
