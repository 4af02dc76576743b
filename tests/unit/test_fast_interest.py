"""The lean ``/interest`` path answers byte for byte as the FastAPI route does, in both stores.

In-process: a real ``UserIndex``. OpenSearch mode without a cluster: ``OpenSearchUsers``
over a store that keeps each user as the document the sink writes (``OpenSearchStore``'s
own encoding, 9-digit decimals) and reads it back through ``record_from_source``, as the
API's reads do (the same equality against a real node: tests/integration/
test_opensearch_api.py). Vectors include the values Python's ``repr`` spells otherwise
(below 1e-4, from 1e16: the route's pydantic-core and orjson agree on them), zeros and
negative zeros.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from interest_stream.api import create_app, fast_interest, get_state
from interest_stream.api.fast_interest import interest_body, interest_user
from interest_stream.core.records import InterestOut, UserRecord
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex, UserIndex
from interest_stream.index.opensearch_mapping import record_from_source
from interest_stream.index.opensearch_store import OpenSearchStore, Upsert
from interest_stream.index.opensearch_users import OpenSearchUsers

SEED = 11
DIM = 48
LONG_ID = "u" * 129
USERS = ["u0", "u/1", "é-2", "u 3", "u" * 128, "u5", "u6"]


class _NoPublisher:
    def tombstone(self, user_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def _vectors(rng: np.random.Generator, u: int) -> tuple[np.ndarray, np.ndarray]:
    short, long = (rng.standard_normal((2, DIM)) * (10.0 ** -(u % 4))).astype(np.float32)
    short[:6] = [0.0, -0.0, 1e-5, -3.3e-7, 2.5e16, 1e-4]  # the spellings that differ
    long[-1] = 123456.78
    return short, long


class _DocStore:
    """The users as the sink's documents, read back as the API's reads do."""

    index = "users"

    def __init__(self, recs: list[UserRecord]) -> None:
        self.dim: int | None = DIM
        self.blend_weight = 0.5
        writer = OpenSearchStore("http://127.0.0.1:1", "users")  # encodes only, never connects
        self.docs = {r.user_id: json.loads(writer._doc(Upsert(r, 0, 0))) for r in recs}

    def ensure_index(self, dim: int | None) -> int | None:
        return self.dim

    def get(self, uid: str) -> UserRecord | None:
        src = self.docs.get(uid)
        return None if src is None else record_from_source(src)

    def count(self) -> int:
        return len(self.docs)

    def health(self) -> str | None:
        return "green"

    def close(self) -> None:
        pass


def _users(store: str) -> Any:
    print(f"seed {SEED}")
    rng = np.random.default_rng(SEED)
    recs = []
    for u, uid in enumerate(USERS):
        short, long = _vectors(rng, u)
        recs.append(UserRecord(uid, u + 1, short, long, 1_700_000_000_000 + u,
                               None if u == 5 else 1_700_000_000_500, None if u == 6 else "m1",
                               recent=(("i1", "view", 1),)))  # fmt: skip
    if store == "faiss":
        index = UserIndex(DIM, backend="numpy", model_version="m1")
        index.upsert_many(recs)
        return index
    return OpenSearchUsers(_DocStore(recs))  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["faiss", "opensearch"])
def clients(request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, TestClient]]:
    """The same users behind two apps: with the lean paths and without them."""
    rng = np.random.default_rng(3)
    items = ItemIndex([f"i{j}" for j in range(50)], rng.standard_normal((50, DIM)).astype(
        np.float32), model_version="m1", backend="numpy")  # fmt: skip
    users = _users(request.param)
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
    "", "explain=false", "explain=0", "explain=False", "explain=no", "explain=true",
    "explain_events=3", "explain_events=20", "explain_events=21", "explain_events=0",
    "explain_events=03", "explain_events=x", "explain=false&explain=false",
    "unknown=1", "explain=false&explain_events=5&other=x",
]  # fmt: skip


@pytest.mark.parametrize("user", [*USERS, "nobody", LONG_ID, ""])
def test_lean_interest_answers_as_the_route(
    clients: tuple[TestClient, TestClient], user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = clients
    lean: list[str] = []  # the answers the lean path wrote (not left to the app)

    def body(rec: UserRecord) -> bytes:
        lean.append(rec.user_id)
        return interest_body(rec)

    monkeypatch.setattr(fast_interest, "interest_body", body)
    for query in QUERIES:
        url = f"/v1/users/{user}/interest?{query}"
        before = len(lean)
        a, b = fast.get(url), slow.get(url)
        plain = interest_user(f"/v1/users/{user}/interest", query.encode())
        assert len(lean) - before == (plain is not None and a.status_code == 200), url
        assert a.status_code == b.status_code, url
        if a.status_code == 200 or b.status_code == 200:  # the answer itself: same bytes
            assert a.content == b.content, url
        else:  # errors come from the app in both (an explanation's worker, 404, 422)
            assert a.json() == b.json(), url
        assert a.headers["content-type"] == b.headers["content-type"]
        assert a.headers["content-length"] == b.headers["content-length"]


def test_lean_interest_is_timed_under_the_route(clients: tuple[TestClient, TestClient]) -> None:
    fast, _slow = clients
    assert fast.get("/v1/users/u0/interest").status_code == 200
    metrics = get_state(fast.app).metrics.render().decode()  # type: ignore[arg-type]
    line = 'route="/v1/users/{user_id}/interest",status="200"'
    assert any(line in row and "_count" in row for row in metrics.splitlines())


def test_body_is_the_route_bytes_at_every_magnitude() -> None:
    """The route's serializer (FastAPI's ``dump_json`` of the response model) as reference."""
    route = TypeAdapter(InterestOut)
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    for exp in range(-45, 37):
        vals = (rng.standard_normal((2, 2000)) * 10.0**exp).astype(np.float32)
        rec = UserRecord('ü/\x01"x\u2028\x7f', exp + 45, vals[0], vals[1], None, 5, "m")
        ref = route.dump_json(InterestOut(**rec.to_dict()), exclude_unset=True)
        assert interest_body(rec) == ref, exp


def test_interest_user() -> None:
    assert interest_user("/v1/users/a/b/interest", b"explain=0&k=3") == "a/b"
    assert interest_user("/v1/users//interest", b"") is None
    assert interest_user("/v1/users/a/interest", b"explain=1") is None
    assert interest_user("/v1/users/a/interest", b"explain_events=1&explain_events=2") is None
    assert interest_user("/v2/users/a/interest", b"") is None
