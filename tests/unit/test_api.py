"""The HTTP API with FastAPI's TestClient: every endpoint and error path, no Kafka."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from interest_stream.api import ApiState, PublishError, create_app, get_state
from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex, UserIndex, write_item_vectors

DIM = 8
TOKEN = "s3cret-admin-token"


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail
        self.closed = False

    def tombstone(self, user_id: str) -> None:
        if self.fail:
            raise PublishError("broker down")
        self.sent.append(user_id)

    def close(self) -> None:
        self.closed = True


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def catalogue() -> ItemIndex:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, DIM)).astype(np.float32)
    return ItemIndex([f"i{j}" for j in range(300)], vecs, model_version="m1", backend="numpy")


def _settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"admin_token": TOKEN, "max_k": 50}
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def app_and_client(
    catalogue: ItemIndex, publisher: FakePublisher
) -> Iterator[tuple[ApiState, TestClient]]:
    forgotten: list[str] = []
    app = create_app(
        _settings(),
        item_index=catalogue,
        start_consumer=False,
        publisher=publisher,
        forget_hooks=[forgotten.append],
    )
    state = get_state(app)
    state.forget_hooks_log = forgotten  # type: ignore[attr-defined]
    rng = np.random.default_rng(1)
    for i in range(40):
        state.users.upsert(
            f"u{i}", 3, _unit(rng.standard_normal(DIM)), _unit(rng.standard_normal(DIM)),
            {"event_time": 1_700_000_000_000 + i, "updated_at": 1_700_000_000_500 + i,
             "model_version": "m1", "recent_items": ["i1", "i2"], "purchased": ["i3"]},
        )  # fmt: skip
    with TestClient(app) as client:
        yield state, client


@pytest.fixture
def client(app_and_client: tuple[ApiState, TestClient]) -> TestClient:
    return app_and_client[1]


def _err(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"error", "detail"}, body
    if code is not None:
        assert body["error"] == code, body
    return body  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- interest
def test_interest(app_and_client: tuple[ApiState, TestClient]) -> None:
    state, client = app_and_client
    r = client.get("/v1/users/u5/interest")
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["user_id", "version", "event_time", "updated_at", "model_version",
                          "short", "long"]  # fmt: skip
    assert body["user_id"] == "u5" and body["version"] == 3
    assert body["event_time"] == 1_700_000_000_005 and body["model_version"] == "m1"
    assert body["short"] == pytest.approx(state.users.get("u5").short.tolist())
    assert len(body["long"]) == DIM


def test_ids_with_slashes_and_spaces(app_and_client: tuple[ApiState, TestClient]) -> None:
    """The event contract allows '/' in ids: every route serves them (URL-encoded or not)."""
    state, client = app_and_client
    v = _unit(np.arange(1, DIM + 1, dtype=np.float32))
    state.users.upsert("shop/42 a", 7, v, v, {"event_time": 1, "updated_at": 2})
    for path in ("shop%2F42%20a", "shop/42%20a"):
        got = client.get(f"/v1/users/{path}/interest")
        assert got.status_code == 200 and got.json()["user_id"] == "shop/42 a"
        recs = client.get(f"/v1/users/{path}/recommendations?k=3")
        assert recs.status_code == 200 and len(recs.json()["items"]) == 3
    assert client.get("/v1/users/shop%2F43/interest").status_code == 404
    gone = client.delete("/v1/users/shop%2F42%20a", headers={"Authorization": f"Bearer {TOKEN}"})
    assert gone.status_code == 200, gone.text
    assert client.get("/v1/users/shop%2F42%20a/interest").status_code == 404


def test_interest_errors(client: TestClient) -> None:
    body = _err(client.get("/v1/users/nobody/interest"), 404, "unknown_user")
    assert "nobody" in body["detail"]
    _err(client.get("/v1/users/" + "x" * 129 + "/interest"), 422, "invalid_request")


# --------------------------------------------------------------------------- recommendations
def test_recommendations(app_and_client: tuple[ApiState, TestClient], catalogue: ItemIndex) -> None:
    state, client = app_and_client
    for horizon in ("short", "long", "blend"):
        r = client.get(f"/v1/users/u7/recommendations?k=5&horizon={horizon}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == "u7" and body["horizon"] == horizon
        want = catalogue.search(state.users.vector("u7", horizon), 5)
        assert [(h["item_id"], pytest.approx(h["score"], abs=1e-5)) for h in body["items"]] == want
    body = client.get("/v1/users/u7/recommendations").json()  # defaults: k=10, blend
    assert body["horizon"] == "blend" and len(body["items"]) == 10


def test_recommendations_exclude(app_and_client: tuple[ApiState, TestClient]) -> None:
    state, client = app_and_client
    vec = state.users.vector("u7", "blend")
    top = [i for i, _ in get_state_items(state).search(vec, 300)]
    # make the excluded items the best ones, then check they disappear
    state.users.upsert("u7", 4, state.users.get("u7").short, state.users.get("u7").long,
                       {"recent_items": top[:2], "purchased": top[2:3]})  # fmt: skip

    def ids(q: str) -> list[str]:
        r = client.get(f"/v1/users/u7/recommendations?k=5{q}")
        assert r.status_code == 200, r.text
        return [h["item_id"] for h in r.json()["items"]]

    assert ids("")[:3] == top[:3]
    assert ids("&exclude=none")[:3] == top[:3]
    assert ids("&exclude=purchased") == [top[0], top[1], *top[3:6]]
    assert ids("&exclude=recent") == top[2:7]
    assert ids("&exclude=seen") == top[3:8] == ids("&exclude=recent,purchased")
    body = _err(client.get("/v1/users/u7/recommendations?exclude=bought"), 422, "invalid_request")
    assert "bought" in body["detail"]


def get_state_items(state: ApiState) -> ItemIndex:
    assert state.items is not None
    return state.items


@pytest.mark.parametrize(
    "query",
    ["k=0", "k=51", "k=-3", "k=abc", "k=1.5", "horizon=weekly", "horizon="],
)
def test_recommendations_bad_params(client: TestClient, query: str) -> None:
    _err(client.get(f"/v1/users/u1/recommendations?{query}"), 422, "invalid_request")


def test_recommendations_unknown_user(client: TestClient) -> None:
    _err(client.get("/v1/users/nobody/recommendations"), 404, "unknown_user")
    _err(client.get("/v1/users/nobody/recommendations?exclude=seen"), 404, "unknown_user")


# --------------------------------------------------------------------------- similar
def test_similar(client: TestClient, catalogue: ItemIndex) -> None:
    r = client.get("/v1/items/i9/similar?k=4")
    assert r.status_code == 200
    body = r.json()
    assert body["item_id"] == "i9" and len(body["items"]) == 4
    assert [h["item_id"] for h in body["items"]] == [i for i, _ in catalogue.similar("i9", 4)]
    assert "i9" not in [h["item_id"] for h in body["items"]]
    _err(client.get("/v1/items/nope/similar"), 404, "unknown_item")
    _err(client.get("/v1/items/i9/similar?k=0"), 422, "invalid_request")
    _err(client.get("/v1/items/i9/similar?k=1000"), 422, "invalid_request")


# --------------------------------------------------------------------------- audience
def test_audience_by_vector_and_item(app_and_client: tuple[ApiState, TestClient]) -> None:
    state, client = app_and_client
    target = state.users.vector("u11", "short")
    r = client.post("/v1/audience", json={"vector": target.tolist(), "k": 3, "horizon": "short"})
    assert r.status_code == 200, r.text
    users = r.json()["users"]
    assert users[0]["user_id"] == "u11" and len(users) == 3
    assert users[0]["score"] == pytest.approx(1.0, abs=1e-5)
    r = client.post("/v1/audience", json={"item_id": "i4", "k": 40})
    assert r.status_code == 200
    got = r.json()["users"]
    want, _ = state.users.search(get_state_items(state).vector("i4"), 40, "blend")
    assert [u["user_id"] for u in got] == want[0]
    assert len(got) == 40
    r = client.post("/v1/audience", json={"vector": [1, 0, 0, 0, 0, 0, 0, 0]})  # ints are numbers
    assert r.status_code == 200 and len(r.json()["users"]) == 10


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "exactly one"),
        ({"item_id": "i1", "vector": [0.0] * DIM}, "exactly one"),
        ({"vector": [0.1] * (DIM - 1)}, "dimension 7, expected 8"),
        ({"vector": []}, "vector"),
        ({"vector": ["a"] * DIM}, "vector"),
        ({"vector": [True] * DIM}, "vector"),
        ({"vector": [0.1] * DIM, "k": 0}, "k"),
        ({"vector": [0.1] * DIM, "k": 51}, "between 1 and 50"),
        ({"vector": [0.1] * DIM, "horizon": "forever"}, "horizon"),
        ({"vector": [0.1] * DIM, "extra": 1}, "extra"),
        ({"item_id": ""}, "item_id"),
        ([1, 2, 3], "body"),
    ],
)
def test_audience_bad_bodies(client: TestClient, body: Any, fragment: str) -> None:
    err = _err(client.post("/v1/audience", json=body), 422, "invalid_request")
    assert fragment in err["detail"], err


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", "1e300", "-4e38"])
def test_audience_non_finite(client: TestClient, token: str) -> None:
    raw = "[" + ",".join([token] + ["0.5"] * (DIM - 1)) + "]"
    r = client.post("/v1/audience", content=f'{{"vector": {raw}}}',
                    headers={"content-type": "application/json"})  # fmt: skip
    _err(r, 422, "invalid_request")


def test_audience_not_json(client: TestClient) -> None:
    r = client.post("/v1/audience", content=b"{not json",
                    headers={"content-type": "application/json"})  # fmt: skip
    _err(r, 422, "invalid_request")


def test_audience_unknown_item(client: TestClient) -> None:
    _err(client.post("/v1/audience", json={"item_id": "nope"}), 404, "unknown_item")


def test_body_too_large(client: TestClient) -> None:
    big = {"vector": [0.5] * 300_000}  # ~ 1.2 MB of JSON
    _err(client.post("/v1/audience", json=big), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"vector": ['
        for _ in range(200):
            yield b"0.5," * 2000
        yield b"0.5]}"

    r = client.post("/v1/audience", content=chunks(), headers={"content-type": "application/json"})
    _err(r, 413, "payload_too_large")


# --------------------------------------------------------------------------- delete
def test_delete_requires_token(client: TestClient, publisher: FakePublisher) -> None:
    r = client.delete("/v1/users/u1")
    _err(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    _err(client.delete("/v1/users/u1", headers={"Authorization": "Basic abc"}), 401)
    _err(client.delete("/v1/users/u1", headers={"Authorization": "Bearer wrong"}), 403, "forbidden")
    _err(client.delete("/v1/users/u1", headers={"Authorization": f"Bearer {TOKEN}x"}), 403)
    assert publisher.sent == []
    assert client.get("/v1/users/u1/interest").status_code == 200


def test_delete_forgets(
    app_and_client: tuple[ApiState, TestClient], publisher: FakePublisher
) -> None:
    state, client = app_and_client
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.delete("/v1/users/u1", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": "u1", "removed": True, "tombstone": True}
    assert publisher.sent == ["u1"]
    assert state.forget_hooks_log == ["u1"]  # type: ignore[attr-defined]
    _err(client.get("/v1/users/u1/interest"), 404, "unknown_user")
    found = client.post("/v1/audience", json={"vector": [0.1] * DIM, "k": 50}).json()["users"]
    assert "u1" not in [u["user_id"] for u in found] and len(found) == 39
    # a user this replica never saw is still tombstoned (the worker or others may hold it)
    r = client.delete("/v1/users/elsewhere", headers=auth)
    assert r.json() == {"user_id": "elsewhere", "removed": False, "tombstone": True}
    assert "interest_api_forgotten_total 2.0" in client.get("/metrics").text


def test_delete_admin_disabled(catalogue: ItemIndex) -> None:
    app = create_app(_settings(admin_token=None), item_index=catalogue, start_consumer=False,
                     publisher=FakePublisher())  # fmt: skip
    with TestClient(app) as client:
        body = _err(client.delete("/v1/users/u1", headers={"Authorization": "Bearer x"}), 403)
        assert body["error"] == "admin_disabled" and "INTEREST_ADMIN_TOKEN" in body["detail"]


def test_delete_kafka_down(catalogue: ItemIndex) -> None:
    app = create_app(_settings(), item_index=catalogue, start_consumer=False,
                     publisher=FakePublisher(fail=True))  # fmt: skip
    get_state(app).users.upsert("u1", 1, np.ones(DIM), np.ones(DIM))
    with TestClient(app) as client:
        r = client.delete("/v1/users/u1", headers={"Authorization": f"Bearer {TOKEN}"})
        _err(r, 503, "kafka_unavailable")
        assert client.get("/v1/users/u1/interest").status_code == 200  # nothing changed


# --------------------------------------------------------------------------- no model
def test_without_model(publisher: FakePublisher) -> None:
    app = create_app(_settings(), start_consumer=False, publisher=publisher)
    state = get_state(app)
    with TestClient(app) as client:
        # no users, no model: the vector's dimension cannot be checked, nobody matches
        assert client.post("/v1/audience", json={"vector": [0.1] * 5}).json() == {"users": []}
        state.users.upsert("u1", 1, np.ones(5), np.ones(5))
        assert client.get("/v1/users/u1/interest").status_code == 200
        for resp in (
            client.get("/v1/users/u1/recommendations"),
            client.get("/v1/items/i1/similar"),
            client.post("/v1/audience", json={"item_id": "i1"}),
        ):
            body = _err(resp, 503, "model_not_loaded")
            assert "INTEREST_MODEL_DIR" in body["detail"]
        r = client.post("/v1/audience", json={"vector": [1, 0, 0, 0, 0]})
        assert r.json()["users"][0]["user_id"] == "u1"
        _err(client.post("/v1/audience", json={"vector": [0.1] * 6}), 422, "invalid_request")
        assert client.get("/readyz").json()["items"] == 0


def test_dimension_conflict(catalogue: ItemIndex) -> None:
    users = UserIndex(DIM + 1)  # vectors from another model than the catalogue
    users.upsert("u1", 1, np.ones(DIM + 1), np.ones(DIM + 1))
    app = create_app(_settings(), item_index=catalogue, user_index=users, start_consumer=False,
                     publisher=FakePublisher())  # fmt: skip
    with TestClient(app) as client:
        _err(client.get("/v1/users/u1/recommendations"), 409, "dimension_mismatch")
        _err(client.post("/v1/audience", json={"item_id": "i1"}), 409, "dimension_mismatch")


def test_given_empty_user_index_is_used() -> None:
    users = UserIndex(DIM, backend="numpy")  # empty, hence falsy: must still be the one used
    app = create_app(_settings(), user_index=users, start_consumer=False, publisher=FakePublisher())
    assert get_state(app).users is users


def test_model_dir_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = [f"i{j}" for j in range(50)]
    write_item_vectors(tmp_path / "ckpt", ids, rng.standard_normal((50, DIM)), blend_alpha=0.3)
    app = create_app(_settings(), model_dir=tmp_path / "ckpt", start_consumer=False,
                     publisher=FakePublisher())  # fmt: skip
    state = get_state(app)
    assert state.items is not None and state.items.count() == 50
    assert state.users.dim == DIM and state.users.blend_weight == pytest.approx(0.3)
    with TestClient(app) as client:
        assert client.get("/v1/items/i0/similar?k=3").status_code == 200


def test_broken_model_dir_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(InterestStreamError):
        create_app(_settings(), model_dir=tmp_path / "missing", start_consumer=False)


# --------------------------------------------------------------------------- ops
def test_health_ready_home_docs(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["users"] == 40 and r.json()["items"] == 300
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "interest-stream" in r.text and "/docs" in r.text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/v1/users/{user_id}/interest", "/v1/users/{user_id}/recommendations",
                 "/v1/items/{item_id}/similar", "/v1/audience", "/v1/users/{user_id}",
                 "/healthz", "/readyz", "/metrics"):  # fmt: skip
        assert path in spec["paths"], path


def test_metrics(client: TestClient) -> None:
    client.get("/v1/users/u1/interest")
    client.get("/v1/users/u1/interest")
    client.get("/v1/users/nobody/interest")
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert "interest_api_users 40.0" in text
    assert "interest_api_items 300.0" in text
    assert "interest_api_consumer_lag" in text and "interest_api_ready 1.0" in text
    line = ('interest_api_request_duration_ms_count{method="GET",'
            'route="/v1/users/{user_id}/interest",status="200"} 2.0')  # fmt: skip
    assert line in text
    assert 'route="/v1/users/{user_id}/interest",status="404"} 1.0' in text
    assert 'route="<unmatched>"' in text
    assert 'le="0.25"' in text and 'le="10.0"' in text  # millisecond buckets
    for result in ("applied", "stale", "malformed", "tombstone"):
        assert f'interest_api_records_total{{result="{result}"}}' in text


def test_unexpected_errors_are_json_500(catalogue: ItemIndex) -> None:
    app = create_app(_settings(), item_index=catalogue, start_consumer=False,
                     publisher=FakePublisher())  # fmt: skip

    def boom(user_id: str) -> None:
        raise RuntimeError("kaput")

    get_state(app).users.get = boom  # type: ignore[method-assign,assignment]
    with TestClient(app, raise_server_exceptions=False) as client:
        body = _err(client.get("/v1/users/u1/interest"), 500, "internal_error")
        assert "kaput" not in json.dumps(body)  # no internals leak
