"""The API moves what it holds out of the garbage collector's reach once caught up
(``gc.freeze``), and gives it back when the app ends; ``api_offload_search`` is read."""

from __future__ import annotations

import gc
import time

import numpy as np
from fastapi.testclient import TestClient

from interest_stream.api import create_app, get_state
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex, UserIndex

DIM = 8


class _NoPublisher:
    def tombstone(self, user_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def _app(settings: Settings) -> TestClient:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((50, DIM)).astype(np.float32)
    items = ItemIndex([f"i{j}" for j in range(50)], vecs, model_version="m1", backend="numpy")
    users = UserIndex(DIM, backend="numpy", model_version="m1")
    users.upsert("u0", 1, *rng.standard_normal((2, DIM)).astype(np.float32), {})
    app = create_app(settings, item_index=items, user_index=users, start_consumer=False,
                     publisher=_NoPublisher(), forget_hooks=[])  # fmt: skip
    return TestClient(app)


def test_objects_are_frozen_once_ready_and_released_at_shutdown() -> None:
    gc.unfreeze()
    with _app(Settings()) as client:
        deadline = time.monotonic() + 10
        while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
            assert client.get("/v1/users/u0/recommendations?k=3").status_code == 200
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_offload_search_comes_from_the_settings() -> None:
    for value in (True, False):
        with _app(Settings(api_offload_search=value)) as client:
            assert get_state(client.app).offload_search is value  # type: ignore[arg-type]
            r = client.get("/v1/users/u0/recommendations?k=3&rank=vector")
            assert r.status_code == 200 and len(r.json()["items"]) == 3
