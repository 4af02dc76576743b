"""The fast path of ``/recommendations`` answers exactly as the FastAPI route does."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from interest_stream.api import create_app, get_state
from interest_stream.api.fast_path import fast_params
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex, UserIndex

DIM = 8
LONG_ID = "u" * 129


class _NoPublisher:
    def tombstone(self, user_id: str) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[TestClient, TestClient]]:
    """The same data behind two apps: with the fast path and without it."""
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((300, DIM)).astype(np.float32)
    items = ItemIndex([f"i{j}" for j in range(300)], vecs, model_version="m1", backend="numpy")
    users = UserIndex(DIM, backend="numpy", model_version="m1")
    for u in range(5):
        short, long = rng.standard_normal((2, DIM)).astype(np.float32)
        meta = {"recent_items": ["i1", "i2", f"i{u}"], "purchased": ["i3"], "model_version": "m1"}
        users.upsert(f"u/{u}" if u == 4 else f"u{u}", 1, short, long, meta)
    apps = [
        create_app(
            Settings(max_k=50),
            item_index=items,
            user_index=users,
            start_consumer=False,
            publisher=_NoPublisher(),
            forget_hooks=[],
            fast_path=fast,
        )
        for fast in (True, False)
    ]
    with TestClient(apps[0]) as fast_client, TestClient(apps[1]) as slow_client:
        yield fast_client, slow_client


QUERIES = [
    "", "k=5", "k=50", "k=51", "k=0", "k=010", "k=5.0", "k=abc", "k=", "k=5&k=6",
    "horizon=short", "horizon=long&k=3", "horizon=bogus", "rank=vector", "rank=rerank",
    "rank=rerank&horizon=short", "rank=", "exclude=recent", "exclude=seen,purchased",
    "exclude=none", "exclude=bogus", "exclude=", "explain=false", "explain=0",
    "explain=true", "explain_events=3", "explain_events=0", "explain_events=21",
    "unknown=1&k=4", "k=7&horizon=short&exclude=purchased&rank=vector",
]  # fmt: skip


@pytest.mark.parametrize("user", ["u0", "u/4", "nobody", LONG_ID])
def test_fast_path_answers_as_the_route(clients: tuple[TestClient, TestClient], user: str) -> None:
    fast, slow = clients
    for query in QUERIES:
        url = f"/v1/users/{user}/recommendations?{query}"
        a, b = fast.get(url), slow.get(url)
        assert (a.status_code, a.json()) == (b.status_code, b.json()), url
        assert a.headers["content-type"] == b.headers["content-type"]


def test_fast_path_is_timed_under_the_route(clients: tuple[TestClient, TestClient]) -> None:
    fast, _slow = clients
    assert fast.get("/v1/users/u1/recommendations?k=3").status_code == 200
    metrics = get_state(fast.app).metrics.render().decode()  # type: ignore[arg-type]
    line = 'route="/v1/users/{user_id}/recommendations",status="200"'
    assert any(line in row and "_count" in row for row in metrics.splitlines())


def test_fast_params() -> None:
    got = fast_params("/v1/users/a/b/recommendations", b"k=3&rank=vector&x=1", 50)
    assert got == {"user_id": "a/b", "k": 3, "horizon": "blend", "exclude": None,
                   "rank": "vector"}  # fmt: skip
    assert fast_params("/v1/users//recommendations", b"", 50) is None
    assert fast_params("/v1/users/a/recommendations", b"k=51", 50) is None
    assert fast_params("/v1/users/a/recommendations", b"explain=true", 50) is None
