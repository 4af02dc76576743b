"""The API follows its model folder: a new checkpoint's item index is swapped in live."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from interest_stream.api import create_app, get_state
from interest_stream.api.model_watch import ModelWatch
from interest_stream.core.settings import Settings
from interest_stream.index import write_item_vectors

IDS = [f"i{j}" for j in range(50)]


def _write(folder: Path, version: str, dim: int = 8, alpha: float = 0.5) -> None:
    vecs = np.random.default_rng(len(version)).standard_normal((len(IDS), dim))
    write_item_vectors(
        folder, IDS, vecs.astype(np.float32), model_version=version, blend_alpha=alpha
    )


def test_the_api_swaps_in_a_new_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _write(folder, "v1")
    app = create_app(Settings(model_dir=folder), start_consumer=False, forget_hooks=[])
    with TestClient(app) as client:
        assert client.get("/v1/stats").json()["model_version"] == "v1"
        _write(folder, "v2", alpha=0.3)
        deadline = time.monotonic() + 60  # polled every 2 s
        while client.get("/v1/stats").json()["model_version"] != "v2":
            assert time.monotonic() < deadline, "the API never loaded checkpoint v2"
            time.sleep(0.2)
        state = get_state(app)
        assert state.users.blend_weight == 0.3 and state.users.model_version == "v2"
        similar = client.get("/v1/items/i1/similar", params={"k": 3})
        assert similar.status_code == 200 and len(similar.json()["items"]) == 3


def test_a_checkpoint_of_another_dimension_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _write(folder, "v1")
    state = get_state(create_app(Settings(model_dir=folder), start_consumer=False, forget_hooks=[]))
    watch = ModelWatch(state)
    assert watch.folder == folder
    assert asyncio.run(watch.check()) is False  # same version: nothing to do
    _write(folder, "v2", dim=16)
    assert asyncio.run(watch.check()) is False
    assert state.items is not None and state.items.model_version == "v1"
    _write(folder, "v3")
    assert asyncio.run(watch.check()) is True
    assert state.items.model_version == "v3" and watch.swaps == 1


def test_no_folder_no_watch() -> None:
    state = get_state(create_app(Settings(), start_consumer=False, forget_hooks=[]))
    watch = ModelWatch(state)
    assert watch.folder is None
    asyncio.run(watch.run())  # returns at once
