"""The API in ``opensearch`` mode answers as in ``faiss`` mode, with no users in memory.

The same output records (stale versions and tombstones included) go through both
stores: the ``faiss`` replica reads the topic, the sink fills OpenSearch and an
``opensearch`` replica reads the cluster. Interest records and recommendations are
identical; audience recall@100 against exact search is >= 0.95; DELETE hides the user.
With a checkpoint's re-ranker, both stores give the same re-ranked recommendations (the
store keeps the records' ``recent`` events), and an index written by an older sink still
serves (the vector ranking for its documents).
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
from interest_stream.core.events import EVENT_TYPES
from interest_stream.core.records import UserRecord
from interest_stream.core.rerank import FEATURES, Reranker, write_reranker
from interest_stream.core.settings import Settings
from interest_stream.index import write_item_vectors
from interest_stream.index.opensearch_mapping import index_body
from interest_stream.index.opensearch_store import OpenSearchStore, Upsert
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


def _reranker_model(folder: Path, rng: np.random.Generator) -> Path:
    """A checkpoint with a re-ranker (hand-set weights: the own-touch features count)."""
    n_items = 300
    model = write_item_vectors(
        folder,
        [f"i{j}" for j in range(n_items)],
        rng.standard_normal((n_items, DIM)).astype(np.float32),
        model_version="it-rr",
        blend_alpha=0.3,
    )
    weights = {"s_blend": 1.0, "z_blend": 0.5, "in_recent": 2.0, "pos_decay": 1.5,
               "log_touches": 0.7, "n_purchase": -1.0, "age_decay_1d": 0.4,
               "log_pop": 0.2}  # fmt: skip
    f = len(FEATURES)
    reranker = Reranker(
        FEATURES, np.zeros(f), np.ones(f), np.array([weights.get(n, 0.0) for n in FEATURES]), 30
    )
    write_reranker(model, reranker, rng.random((n_items, 3)).astype(np.float32))
    return model


def _recent(rng: np.random.Generator, u: int) -> list[list[Any]]:
    """A user's latest events, oldest first; some items outside the catalogue."""
    n = int(rng.integers(1, 21))
    t0 = 1_700_000_000_000 + u
    return [[f"i{int(rng.integers(0, 320))}", EVENT_TYPES[int(rng.integers(0, 5))], t0 + 60_000 * e]
            for e in range(n)]  # fmt: skip


def test_opensearch_mode_reranks_as_in_process(
    make_settings: Callable[..., Settings], opensearch_url: str, tmp_path: Path
) -> None:
    """Both stores give the same re-ranked answers; an index an older sink wrote (no
    ``recent`` field in its mapping nor in its documents) keeps serving: the new sink adds
    the field, the old documents get the vector ranking."""
    seed = 17
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    settings = make_settings(
        opensearch_url=opensearch_url,
        model_dir=_reranker_model(tmp_path / "model", rng),
        opensearch_index=f"rr{uuid.uuid4().hex[:10]}",
    )
    ensure_topics(settings)
    # the index as an older sink created and wrote it: no "recent" anywhere
    store = OpenSearchStore(opensearch_url, settings.opensearch_index, blend_weight=0.3)
    old_body = index_body(DIM)
    old_body["mappings"]["properties"].pop("recent")
    store.client.indices.create(index=store.index, body=old_body)
    old_ids = [f"old-{u}" for u in range(8)]
    for uid in old_ids:
        rec = UserRecord(uid, 2, rng.standard_normal(DIM).astype(np.float32),
                         rng.standard_normal(DIM).astype(np.float32), 1, 2, "it-rr",
                         recent=(("i1", "view", 1),))  # fmt: skip
        doc = json.loads(store._doc(Upsert(rec, 0, 0)))
        doc.pop("recent")
        store.client.index(index=store.index, id=uid, body=doc,
                           params={"version": 2, "version_type": "external_gte"})  # fmt: skip
    # the topic: records with their recent events, some without (an older worker's)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    users = [f"user-{u}" for u in range(60)]
    for u, uid in enumerate(users):
        rec: dict[str, Any] = {
            "user_id": uid, "version": 1 + u % 3, "event_time": 1_700_000_000_000 + u,
            "updated_at": 1_700_000_000_500, "model_version": "it-rr",
            "short": _vec(rng), "long": _vec(rng), "purchased": [f"i{u % 9}"],
        }  # fmt: skip
        if u % 10 != 9:
            rec["recent"] = _recent(rng, u)
        producer.send(settings.output_topic, key=uid.encode(), value=json.dumps(rec).encode())
    producer.flush()
    producer.close()
    sink = OpenSearchSink(settings)
    sink.run(idle_exit_s=3.0)
    assert sink.stats.applied == len(users) and sink.stats.retries == 0, sink.stats
    mapping = store.client.indices.get_mapping(index=store.index)[store.index]
    assert mapping["mappings"]["properties"]["recent"] == {"type": "object", "enabled": False}
    store.refresh()
    hooks: list[Any] = []
    faiss_app = create_app(settings, forget_hooks=hooks)
    os_app = create_app(settings.model_copy(update={"user_store": "opensearch"}),
                        forget_hooks=hooks)  # fmt: skip
    with TestClient(faiss_app) as fa, TestClient(os_app) as oa:
        _ready(fa)
        _ready(oa)
        deadline = time.monotonic() + 60
        while fa.get("/v1/stats").json()["users"] < len(users):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rankings: dict[str, int] = {}
        differs = 0
        for u, uid in enumerate(users):
            a, b = fa.get(f"/v1/users/{uid}/interest"), oa.get(f"/v1/users/{uid}/interest")
            assert a.status_code == b.status_code == 200 and a.content == b.content, uid
            for query in ("k=10", "k=5&exclude=seen", "k=20&rank=rerank&horizon=blend"):
                url = f"/v1/users/{uid}/recommendations?{query}"
                got_a, got_b = fa.get(url), oa.get(url)
                assert got_a.status_code == got_b.status_code == 200, (url, got_b.text)
                assert got_a.json() == got_b.json(), url
                ranking = got_b.json()["ranking"]
                rankings[ranking] = rankings.get(ranking, 0) + 1
                assert ranking == ("vector" if u % 10 == 9 else "rerank"), url
            vector = oa.get(f"/v1/users/{uid}/recommendations?k=10&rank=vector").json()
            differs += (
                vector["items"] != oa.get(f"/v1/users/{uid}/recommendations?k=10").json()["items"]
            )
        print(rankings, f"re-ranked top 10 differs from the vector one for {differs} users")
        assert differs >= len(users) // 2  # the re-ranker really re-ranks
        consumer = oa.get("/healthz").json()["consumer"]  # reads by id, batched into _mget
        assert (
            consumer["reads"] >= 6 * len(users)
            and 1 <= consumer["read_requests"] <= consumer["reads"]
        ), consumer
        for uid in old_ids:  # the older sink's documents: served, vector ranking
            got = oa.get(f"/v1/users/{uid}/recommendations?k=10")
            assert got.status_code == 200 and got.json()["ranking"] == "vector", got.text
            assert got.json() == oa.get(f"/v1/users/{uid}/recommendations?k=10&rank=vector").json()
            assert oa.get(f"/v1/users/{uid}/interest").status_code == 200
    store.client.indices.delete(index=store.index, ignore_unavailable=True)
    store.close()
