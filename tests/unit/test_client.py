"""The typed HTTP client against the real FastAPI app (TestClient, no network, no Kafka)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from interest_stream.api import PublishError, create_app, get_state
from interest_stream.client import (
    ApiRequestError,
    ApiUnreachable,
    Conflict,
    Forbidden,
    InterestClient,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex

DIM = 8
TOKEN = "client-admin-token"
ODD_USER = "a b?c#d%e"  # needs percent-encoding in a path segment


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail = False

    def tombstone(self, user_id: str) -> None:
        if self.fail:
            raise PublishError("broker down")
        self.sent.append(user_id)

    def close(self) -> None:
        pass


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def setup() -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(3)
    items = ItemIndex([f"i{j}" for j in range(100)], rng.standard_normal((100, DIM)),
                      model_version="m1", backend="numpy")  # fmt: skip
    publisher = FakePublisher()
    app = create_app(Settings(admin_token=TOKEN, max_k=50), item_index=items,
                     start_consumer=False, publisher=publisher, forget_hooks=[])  # fmt: skip
    state = get_state(app)
    for uid in ("u1", "u2", ODD_USER):
        state.users.upsert(uid, 4, _unit(rng), _unit(rng),
                           {"model_version": "m1", "recent_items": ["i1", "i2"],
                            "purchased": ["i3"], "event_time": 1_700_000_000_000})  # fmt: skip
    with TestClient(app) as http:
        yield {"http": http, "state": state, "items": items, "publisher": publisher}


@pytest.fixture
def api(setup: dict[str, Any]) -> InterestClient:
    return InterestClient(http=setup["http"], admin_token=TOKEN)


def test_interest_is_typed_and_matches_the_index(
    api: InterestClient, setup: dict[str, Any]
) -> None:
    rec = api.interest("u1")
    held = setup["state"].users.get("u1")
    assert (rec.user_id, rec.version, rec.model_version) == ("u1", 4, "m1")
    assert rec.event_time == 1_700_000_000_000
    assert rec.short == pytest.approx(held.short.tolist()) and len(rec.long) == DIM
    # ids are one percent-encoded path segment: ' ', '?', '#', '%' reach the server intact
    assert api.interest(ODD_USER).user_id == ODD_USER


def test_recommendations_similar_audience(api: InterestClient, setup: dict[str, Any]) -> None:
    items: ItemIndex = setup["items"]
    users = setup["state"].users
    short = api.recommendations("u1", 5, horizon="short")
    assert [h.item_id for h in short] == [
        i for i, _ in items.search(users.vector("u1", "short"), 5)
    ]
    assert short[0].score >= short[-1].score
    seen = api.recommendations("u1", 50, exclude=["seen"])
    assert {"i1", "i2", "i3"}.isdisjoint(h.item_id for h in seen) and len(seen) == 50

    sim = api.similar("i7", 4)
    assert len(sim) == 4 and "i7" not in {h.item_id for h in sim}
    assert [h.item_id for h in sim] == [i for i, _ in items.similar("i7", 4)]

    by_item = api.audience(item_id="i7", k=2)
    assert len(by_item) == 2 and {u.user_id for u in by_item} <= {"u1", "u2", ODD_USER}
    by_vec = api.audience(vector=users.vector("u2", "long").tolist(), k=1, horizon="long")
    assert by_vec[0].user_id == "u2"


def test_errors_map_to_exception_types(api: InterestClient) -> None:
    with pytest.raises(NotFound) as nf:
        api.interest("nobody")
    assert nf.value.status == 404 and nf.value.code == "unknown_user"
    assert "nobody" in str(nf.value.detail)
    with pytest.raises(NotFound, match="unknown_item"):
        api.similar("no-such-item")
    with pytest.raises(InvalidRequest) as bad:
        api.recommendations("u1", k=51)
    assert bad.value.status == 422 and "k" in str(bad.value.detail)
    with pytest.raises(InvalidRequest, match="exclude"):
        api.recommendations("u1", exclude=["everything"])
    with pytest.raises(InvalidRequest, match="dimension"):
        api.audience(vector=[0.1] * (DIM + 1))
    with pytest.raises(ValueError, match="exactly one"):
        api.audience()
    with pytest.raises(ValueError, match="NaN"):
        api.audience(vector=[float("nan")] * DIM)
    # the whole family is catchable at once
    for exc in (NotFound, InvalidRequest, Unauthorized, Forbidden, Conflict, ServiceUnavailable):
        assert issubclass(exc, ApiRequestError) and issubclass(exc, InterestStreamError)


def test_forget_and_its_errors(api: InterestClient, setup: dict[str, Any]) -> None:
    http = setup["http"]
    with pytest.raises(Unauthorized) as e401:
        InterestClient(http=http).forget("u2")
    assert e401.value.status == 401
    with pytest.raises(Forbidden):
        InterestClient(http=http, admin_token="wrong").forget("u2")
    assert setup["publisher"].sent == []

    out = api.forget("u2")
    assert out.user_id == "u2" and out.removed is True and out.tombstone is True
    assert setup["publisher"].sent == ["u2"]
    with pytest.raises(NotFound):
        api.interest("u2")

    setup["publisher"].fail = True
    with pytest.raises(ServiceUnavailable) as e503:
        api.forget("u1")
    assert e503.value.code == "kafka_unavailable"


def test_no_model_is_service_unavailable() -> None:
    app = create_app(Settings(), start_consumer=False, publisher=FakePublisher())
    get_state(app).users.upsert("u1", 1, np.ones(DIM, np.float32), np.ones(DIM, np.float32))
    with TestClient(app) as http:
        api = InterestClient(http=http)
        assert api.interest("u1").version == 1
        with pytest.raises(ServiceUnavailable) as exc:
            api.recommendations("u1")
    assert exc.value.code == "model_not_loaded"


def test_unreachable_server() -> None:
    with InterestClient("http://127.0.0.1:9", timeout=1.0) as api, pytest.raises(ApiUnreachable):
        api.interest("u1")
