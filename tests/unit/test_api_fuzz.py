"""Hostile HTTP input (issue #6): explicit bad parameters, and a schemathesis fuzz from OpenAPI.

Every endpoint must answer bad input with a 4xx and a JSON ``{"error", "detail"}``
body, never a 500: k out of range, a vector of the wrong dimension, NaN/inf in a
vector (JSON has no NaN, but Python clients send the ``NaN`` token), an
oversized body, wrong types, unknown fields, ids at and past their length limit.
Then schemathesis generates requests from the app's own OpenAPI schema
(positive and negative data) and checks that no response is a 5xx and that
every response conforms to the schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from interest_stream.api import PublishError, create_app, get_state
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex

DIM = 8
TOKEN = "fuzz-admin-token-1234"
MAX_K = 50


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def tombstone(self, user_id: str) -> None:
        if not user_id:
            raise PublishError("empty id")
        self.sent.append(user_id)

    def close(self) -> None:
        pass


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def build_app() -> FastAPI:
    rng = np.random.default_rng(0)
    items = ItemIndex([f"i{j}" for j in range(200)],
                      rng.standard_normal((200, DIM)).astype(np.float32),
                      model_version="m1", backend="numpy")  # fmt: skip
    app = create_app(
        Settings(admin_token=TOKEN, max_k=MAX_K, api_max_body_bytes=64 * 1024),
        item_index=items,
        start_consumer=False,
        publisher=FakePublisher(),
        forget_hooks=[lambda user: None],
    )
    users = get_state(app).users
    for i in range(30):
        users.upsert(
            f"u{i}", 2, _unit(rng.standard_normal(DIM)), _unit(rng.standard_normal(DIM)),
            {"event_time": 1, "updated_at": 2, "model_version": "m1",
             "recent_items": ["i1"], "purchased": ["i2"]},
        )  # fmt: skip
    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build_app(), raise_server_exceptions=False) as c:
        yield c


def _is_4xx_json(resp: Any, status: int | None = None) -> dict[str, Any]:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    if status is not None:
        assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body, dict) and body.get("error") and body.get("detail"), body
    return body


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users/u1/recommendations?k=0",
        "/v1/users/u1/recommendations?k=-3",
        f"/v1/users/u1/recommendations?k={MAX_K + 1}",
        "/v1/users/u1/recommendations?k=99999999999999999999999",
        "/v1/users/u1/recommendations?k=abc",
        "/v1/users/u1/recommendations?k=1.5",
        "/v1/users/u1/recommendations?horizon=forever",
        "/v1/users/u1/recommendations?exclude=everything",
        "/v1/items/i1/similar?k=0",
        f"/v1/items/i1/similar?k={MAX_K + 1}",
        "/v1/items/i1/similar?k=NaN",
        "/v1/users/" + "x" * 129 + "/interest",
        "/v1/users/%00/interest",
        "/v1/users/%E2%80%AE%00bad/recommendations",
        "/v1/items/" + "\U0001f600" * 129 + "/similar",
    ],
)
def test_bad_query_parameters_are_4xx(client: TestClient, path: str) -> None:
    _is_4xx_json(client.get(path))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"vector": [0.1] * (DIM - 1)}, 422),  # wrong dimension
        ({"vector": [0.1] * (DIM + 1)}, 422),
        ({"vector": []}, 422),
        ({"vector": ["a"] * DIM}, 422),
        ({"vector": [True] * DIM}, 422),
        ({"vector": [0.1] * DIM, "k": 0}, 422),
        ({"vector": [0.1] * DIM, "k": MAX_K + 1}, 422),
        ({"vector": [0.1] * DIM, "k": 10**30}, 422),
        ({"vector": [0.1] * DIM, "item_id": "i1"}, 422),  # both
        ({}, 422),  # neither
        ({"item_id": ""}, 422),
        ({"item_id": "i1", "horizon": "sideways"}, 422),
        ({"item_id": "i1", "extra": 1}, 422),
        ({"item_id": "nope"}, 404),
        ([1, 2, 3], 422),
        ("just a string", 422),
    ],
)
def test_bad_audience_bodies_are_4xx(client: TestClient, body: Any, status: int) -> None:
    _is_4xx_json(client.post("/v1/audience", json=body), status)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_vector_values_are_422(client: TestClient, token: str) -> None:
    raw = '{"vector": [' + ", ".join([token] + ["0.1"] * (DIM - 1)) + "]}"
    resp = client.post("/v1/audience", content=raw, headers={"content-type": "application/json"})
    _is_4xx_json(resp, 422)


def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    hdr = {"content-type": "application/json"}
    _is_4xx_json(client.post("/v1/audience", content=b"{not json", headers=hdr), 422)
    _is_4xx_json(client.post("/v1/audience", content=b"\xff\xfe\x00", headers=hdr), 422)
    _is_4xx_json(client.post("/v1/audience", content=b"[" * 10_000, headers=hdr))
    big = json.dumps({"vector": [0.123456789] * 20_000}).encode()
    assert len(big) > 64 * 1024
    _is_4xx_json(client.post("/v1/audience", content=big, headers=hdr), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(100):
            yield b" " * 1024

    _is_4xx_json(client.post("/v1/audience", content=chunks(), headers=hdr), 413)


def test_admin_delete_bad_input(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _is_4xx_json(client.delete("/v1/users/" + "x" * 129, headers=auth), 422)
    _is_4xx_json(client.delete("/v1/users/u1"), 401)
    _is_4xx_json(client.delete("/v1/users/u1", headers={"Authorization": "Bearer " + "x" * 5000}))
    _is_4xx_json(
        client.delete(
            "/v1/users/u1", headers={"Authorization": "Bearer \u00e9t\u00e9".encode("latin-1")}
        )
    )
    _is_4xx_json(client.post("/v1/users/u1/interest"), 405)


# --------------------------------------------------------------------------- schemathesis
schema = schemathesis.openapi.from_asgi("/openapi.json", build_app())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz_never_500(case: schemathesis.Case) -> None:
    if case.method.upper() == "DELETE":
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert "error" in body and "detail" in body, body
    case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])
