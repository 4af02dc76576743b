"""The API against a real broker: replicas fill their indexes from the output topic.

Publishes output records with kafka-python, starts ``interest-stream serve`` as a
child process on a free port, and checks readiness, live updates, stale versions,
tombstones, the admin delete, and that a second replica started later serves
the same answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import settings_env
from kafka import KafkaProducer

from interest_stream.core.settings import Settings
from interest_stream.index import write_item_vectors
from interest_stream.streams.kafka_local.broker import free_port
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

DIM = 16
TOKEN = "integration-admin-token"


def _vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).round(6).tolist()


def record(user: str, version: int, seed: int) -> dict[str, Any]:
    return {"user_id": user, "version": version, "event_time": 1_700_000_000_000 + version,
            "updated_at": 1_700_000_000_500 + version, "model_version": "it-1",
            "short": _vec(seed), "long": _vec(seed + 1000)}  # fmt: skip


class Replica:
    """``interest-stream serve`` in a child process."""

    def __init__(self, settings: Settings, model_dir: Path, log: Path) -> None:
        self.port = free_port()
        env = settings_env(settings)
        env.update(INTEREST_API_PORT=str(self.port), INTEREST_API_HOST="127.0.0.1",
                   INTEREST_MODEL_DIR=str(model_dir), INTEREST_LOG_LEVEL="INFO")  # fmt: skip
        self.log = log
        self._out = log.open("wb")
        cli = Path(sys.executable).with_name("interest-stream")
        self.proc = subprocess.Popen(
            [str(cli), "serve"], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def wait_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"API exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                self.get("/healthz")
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"API did not start:\n{self.tail()}")

    def tail(self) -> str:
        self._out.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def metric(replica: Replica, name: str) -> float:
    text = replica.get("/metrics").text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def env(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = make_settings(admin_token=TOKEN)
    ensure_topics(settings)
    rng = np.random.default_rng(0)
    items = rng.standard_normal((500, DIM)).astype(np.float32)
    model_dir = write_item_vectors(tmp_path / "model", [f"i{j}" for j in range(500)], items,
                                   model_version="it-1")  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             key_serializer=str.encode)  # fmt: skip
    replicas: list[Replica] = []

    def publish(user: str, value: dict[str, Any] | bytes | None) -> None:
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        producer.send(settings.output_topic, key=user, value=raw)
        producer.flush(10)

    def start_replica() -> Replica:
        r = Replica(settings, model_dir, tmp_path / f"api-{len(replicas)}.log")
        replicas.append(r)
        r.wait_up()
        return r

    try:
        yield {"settings": settings, "publish": publish, "start": start_replica}
    finally:
        producer.close(5)
        for r in replicas:
            r.close()


def test_replicas_follow_the_output_topic(env: dict[str, Any]) -> None:
    publish, start = env["publish"], env["start"]
    for i in range(50):
        publish(f"u{i}", record(f"u{i}", 1, i))
    publish("bad", b"{not json")  # malformed: counted, never fatal
    publish("u7", None)  # a tombstone in the backlog

    a = start()
    wait_for(lambda: a.get("/readyz").status_code == 200, "replica A ready")
    ready = a.get("/readyz").json()
    assert ready["users"] == 49 and ready["items"] == 500 and ready["lag"] == 0
    body = a.get("/v1/users/u3/interest").json()
    assert body["version"] == 1 and body["model_version"] == "it-1"
    assert body["short"] == pytest.approx(_vec(3), abs=1e-6)
    assert a.get("/v1/users/u7/interest").status_code == 404
    assert metric(a, 'interest_api_records_total{result="malformed"}') == 1

    # a newer version replaces the vectors
    publish("u3", record("u3", 2, 333))
    wait_for(lambda: a.get("/v1/users/u3/interest").json()["version"] == 2, "u3 v2")
    assert a.get("/v1/users/u3/interest").json()["short"] == pytest.approx(_vec(333), abs=1e-6)

    # a stale one is ignored
    stale_before = metric(a, 'interest_api_records_total{result="stale"}')
    publish("u3", record("u3", 1, 999))
    wait_for(lambda: metric(a, 'interest_api_records_total{result="stale"}') > stale_before,
             "stale record counted")  # fmt: skip
    body = a.get("/v1/users/u3/interest").json()
    assert body["version"] == 2 and body["short"] == pytest.approx(_vec(333), abs=1e-6)

    # a tombstone removes the user
    publish("u4", None)
    wait_for(lambda: a.get("/v1/users/u4/interest").status_code == 404, "u4 removed")

    # the admin delete tombstones the user for everyone
    r = a.http.delete("/v1/users/u5", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["tombstone"] is True
    assert a.get("/v1/users/u5/interest").status_code == 404
    assert a.http.delete("/v1/users/u5").status_code == 401

    recs = a.get("/v1/users/u9/recommendations?k=7&horizon=long").json()
    audience = a.http.post("/v1/audience", json={"item_id": "i3", "k": 20}).json()
    assert len(recs["items"]) == 7 and len(audience["users"]) == 20

    # a second replica started later serves the same answers
    b = start()
    wait_for(lambda: b.get("/readyz").status_code == 200, "replica B ready")
    assert b.get("/readyz").json()["users"] == a.get("/readyz").json()["users"] == 47
    for user in ("u3", "u4", "u5", "u7", "u9", "u49"):
        ra, rb = a.get(f"/v1/users/{user}/interest"), b.get(f"/v1/users/{user}/interest")
        assert ra.status_code == rb.status_code
        assert ra.json() == rb.json()
    assert b.get("/v1/users/u9/recommendations?k=7&horizon=long").json() == recs
    assert b.http.post("/v1/audience", json={"item_id": "i3", "k": 20}).json() == audience
    assert "interest_api_ready 1.0" in b.get("/metrics").text


def test_replica_catches_up_with_a_backlog(env: dict[str, Any]) -> None:
    """Readiness is 503 (with the lag) while catching up, 200 after; all users are there."""
    settings, start = env["settings"], env["start"]
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    payload = record("x", 1, 1)
    n = 30_000
    for i in range(n):
        value = json.dumps({**payload, "user_id": f"y{i}"}).encode()
        producer.send(settings.output_topic, key=f"y{i}".encode(), value=value)
    producer.flush(60)
    producer.close(5)
    r = start()
    seen: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        resp = r.get("/readyz")
        seen.append(resp.status_code)
        if resp.status_code == 200:
            break
        body = resp.json()
        assert body["error"] == "not_ready" and "detail" in body, body
        time.sleep(0.02)
    assert seen[-1] == 200, r.tail()
    assert r.get("/readyz").json()["users"] == n
    assert r.get(f"/v1/users/y{n - 1}/interest").json()["version"] == 1
