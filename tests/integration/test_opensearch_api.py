"""The API in ``opensearch`` mode answers as in ``faiss`` mode, with no users in memory.

The same output records (stale versions and tombstones included) go through both
stores: the ``faiss`` replica reads the topic, the sink fills OpenSearch and an
``opensearch`` replica reads the cluster. Interest records and recommendations are
identical; audience recall@100 against exact search is >= 0.95; DELETE hides the user.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaProducer

from interest_stream.api import create_app
from interest_stream.core.settings import Settings
from interest_stream.index import write_item_vectors
from interest_stream.index.opensearch_store import OpenSearchStore
from interest_stream.sink import OpenSearchSink
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

DIM = 16
USERS = 600
TOKEN = "os-admin"


def _vec(rng: np.random.Generator) -> list[float]:
    return rng.standard_normal(DIM).round(6).tolist()


def _publish(settings: Settings) -> dict[str, dict[str, Any]]:
    """Records for USERS users (some stale, some forgotten); the expected final records."""
    rng = np.random.default_rng(5)
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", key_serializer=str.encode
    )
    final: dict[str, dict[str, Any]] = {}
    for u in range(USERS):
        uid = f"user-{u}"
        for version in (1, 3, 2):  # 2 arrives after 3: stale
            rec = {
                "user_id": uid,
                "version": version,
                "event_time": 1_700_000_000_000 + version,
                "updated_at": 1_700_000_000_500,
                "model_version": "it-1",
                "short": _vec(rng),
                "long": _vec(rng),
                "recent": [[f"i{u % 50}", "view", 1]],
                "purchased": [f"i{u % 7}"],
            }
            producer.send(settings.output_topic, key=uid, value=json.dumps(rec).encode())
            if version == 3:
                final[uid] = rec
        if u % 25 == 0:
            producer.send(settings.output_topic, key=uid, value=None)
            final.pop(uid)
    producer.flush()
    producer.close()
    return final


def _ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.2)


def test_opensearch_mode_answers_as_faiss_mode(
    make_settings: Callable[..., Settings], opensearch_url: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    model = write_item_vectors(
        tmp_path / "model",
        [f"i{j}" for j in range(300)],
        rng.standard_normal((300, DIM)).astype(np.float32),
        model_version="it-1",
        blend_alpha=0.3,
    )
    settings = make_settings(
        opensearch_url=opensearch_url,
        model_dir=model,
        admin_token=TOKEN,
        opensearch_index=f"api{uuid.uuid4().hex[:10]}",
    )
    ensure_topics(settings)
    final = _publish(settings)
    sink = OpenSearchSink(settings)
    runner = threading.Thread(target=sink.run, kwargs={"idle_exit_s": 3.0})
    runner.start()
    os_settings = settings.model_copy(update={"user_store": "opensearch"})
    hooks: list[Any] = []
    faiss_app = create_app(settings, forget_hooks=hooks)
    os_app = create_app(os_settings, forget_hooks=hooks)
    runner.join(120)
    assert not runner.is_alive() and sink.stats.applied >= len(final)
    store = OpenSearchStore(opensearch_url, settings.opensearch_index)
    store.refresh()
    with TestClient(faiss_app) as fa, TestClient(os_app) as oa:
        _ready(fa)
        _ready(oa)
        assert oa.get("/v1/stats").json()["users"] == fa.get("/v1/stats").json()["users"]
        for u in range(0, USERS, 7):
            uid = f"user-{u}"
            a, b = fa.get(f"/v1/users/{uid}/interest"), oa.get(f"/v1/users/{uid}/interest")
            assert a.status_code == b.status_code == (200 if uid in final else 404), uid
            assert a.json() == b.json()
            if uid in final:
                for horizon in ("short", "blend"):
                    q = f"/v1/users/{uid}/recommendations?k=5&horizon={horizon}&exclude=seen"
                    assert fa.get(q).json() == oa.get(q).json()
        ids = sorted(final)
        mats = {
            "short": np.array([final[i]["short"] for i in ids], np.float32),
            "long": np.array([final[i]["long"] for i in ids], np.float32),
        }
        mats["blend"] = 0.3 * mats["short"] + 0.7 * mats["long"]
        recalls = []
        for j in range(10):
            q = rng.standard_normal(DIM).astype(np.float32)
            horizon = ("short", "long", "blend")[j % 3]
            exact = {ids[i] for i in np.argsort(-(mats[horizon] @ q))[:100]}
            body = {"vector": q.tolist(), "k": 100, "horizon": horizon}
            got = oa.post("/v1/audience", json=body)
            assert got.status_code == 200, got.text
            recalls.append(len({h["user_id"] for h in got.json()["users"]} & exact) / 100)
        assert np.mean(recalls) >= 0.95, recalls
        # DELETE hides the user at once in opensearch mode too
        victim = ids[0]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert oa.delete(f"/v1/users/{victim}", headers=headers).json()["removed"] is True
        assert oa.get(f"/v1/users/{victim}/interest").status_code == 404
    store.client.indices.delete(index=store.index, ignore_unavailable=True)
    store.close()
