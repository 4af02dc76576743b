"""The OpenSearch user store against a real OpenSearch node (the session's, k-NN).

External versions (a stale write is a 409, i.e. done; a tie is applied), real-time GET
returns the record as written, a forget stays when an old record is replayed, a new
life comes back, k-NN audience per horizon against exact search; reads by id on the
event loop (the API's path, concurrent reads batched into ``_mget``) answer the same as
single reads and fail over to the next node.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from interest_stream.core.kafka import free_port
from interest_stream.core.records import UserRecord
from interest_stream.index.errors import StoreUnavailable, UnknownId
from interest_stream.index.opensearch_async import AsyncGetter
from interest_stream.index.opensearch_mapping import index_body
from interest_stream.index.opensearch_store import Life, OpenSearchStore, Upsert
from interest_stream.index.opensearch_users import OpenSearchUsers

pytestmark = pytest.mark.integration

DIM = 8


@pytest.fixture
def store(opensearch_url: str) -> Iterator[OpenSearchStore]:
    st = OpenSearchStore(opensearch_url, f"t{uuid.uuid4().hex[:10]}", blend_weight=0.25)
    try:
        yield st
    finally:
        st.client.indices.delete(index=st.index, ignore_unavailable=True)
        st.close()


def _rec(uid: str, version: int, rng: np.random.Generator) -> UserRecord:
    return UserRecord(
        user_id=uid,
        version=version,
        short=rng.standard_normal(DIM).astype(np.float32),
        long=rng.standard_normal(DIM).astype(np.float32),
        event_time=1_700_000_000_000 + version,
        updated_at=1_700_000_000_500,
        model_version="m1",
        recent_items=("i1", "i2"),
        purchased=("i2",),
        recent=(("i1", "view", 1_700_000_000_000), ("i2", "purchase", 1_700_000_000_000 + version)),
    )


def _same(a: UserRecord | None, b: UserRecord) -> bool:
    return (
        a is not None
        and a.user_id == b.user_id
        and a.version == b.version
        and np.array_equal(a.short, b.short)
        and np.array_equal(a.long, b.long)
        and (a.event_time, a.updated_at, a.model_version)
        == (b.event_time, b.updated_at, b.model_version)
        and (a.recent_items, a.purchased, a.recent) == (b.recent_items, b.purchased, b.recent)
    )


def test_recent_events_are_kept_and_an_older_index_gets_their_field(
    store: OpenSearchStore,
) -> None:
    """The re-ranker's ``recent`` events round-trip (stored, not indexed); an index created
    without the field (an older sink's) refuses them until a writer adds it, and its older
    documents read back without events."""
    rng = np.random.default_rng(9)
    old = index_body(DIM)
    old["mappings"]["properties"].pop("recent")
    store.client.indices.create(index=store.index, body=old)
    store.dim = DIM
    first = _rec("a", 1, rng)
    plain = json.loads(store._doc(Upsert(first, 0, 0)))
    plain.pop("recent")
    store.client.index(index=store.index, id="a", body=plain,
                       params={"version": 1, "version_type": "external_gte"})  # fmt: skip
    got = store.get("a")
    assert got is not None and got.recent == () and got.version == 1
    rec = _rec("b", 2, rng)
    (refused,) = store.write([Upsert(rec, 0, 1)])  # strict mapping: no such field
    assert refused.result == "failed" and "strict" in refused.reason, refused
    assert store.ensure_index(None) == DIM  # a reader does not touch the mapping
    assert (
        "recent"
        not in store.client.indices.get_mapping(index=store.index)[store.index]["mappings"][
            "properties"
        ]
    )
    assert store.ensure_index(DIM) == DIM  # a writer adds the field
    props = store.client.indices.get_mapping(index=store.index)[store.index]["mappings"]
    assert props["properties"]["recent"] == {"type": "object", "enabled": False}
    assert [o.result for o in store.write([Upsert(rec, 0, 1)])] == ["applied"]
    assert _same(store.get("b"), rec) and _same(store.get("a"), replace(first, recent=()))
    users = OpenSearchUsers(store, getter=AsyncGetter(store.hosts, store.index))

    async def read() -> list[UserRecord]:
        return list(await asyncio.gather(users.aget("b"), users.aget("a")))

    b, a = asyncio.run(read())
    assert _same(b, rec) and b.recent == rec.recent and a.recent == ()
    # not indexed: no query can find a user by a recent item
    store.refresh()
    hits = store.client.search(index=store.index, body={"query": {"term": {"recent": "i1"}}})
    assert hits["hits"]["total"]["value"] == 0


def test_store_versions_forget_and_audience(store: OpenSearchStore) -> None:
    rng = np.random.default_rng(7)
    store.ensure_index(DIM)
    v5, v3, v5b = _rec("a", 5, rng), _rec("a", 3, rng), _rec("a", 5, rng)
    assert [o.result for o in store.write([Upsert(v5, 0, 10)])] == ["applied"]
    assert [o.result for o in store.write([Upsert(v3, 0, 11)])] == ["stale"]
    assert _same(store.get("a"), v5)  # real-time GET, no refresh
    assert [o.result for o in store.write([Upsert(v5b, 0, 12)])] == ["applied"]  # tie: last wins
    assert _same(store.get("a"), v5b)
    life = store.forget("a", 0, 13)
    assert store.get("a") is None
    assert store.forget("a", 0, 13) == life  # a replayed tombstone changes nothing
    assert [o.result for o in store.write([Upsert(v5b, 0, 12)])] == ["stale"]  # old record
    new = _rec("a", 1, rng)
    assert [o.result for o in store.write([Upsert(new, 0, 14, life)])] == ["applied"]
    assert _same(store.get("a"), new)
    assert store.lives(0) == {"a": Life(life.base, 13)} and store.lives(1) == {}
    # audience: k-NN per horizon against exact inner products
    users = [_rec(f"u{i}", 1, rng) for i in range(300)]
    assert {o.result for o in store.write(Upsert(u, 1, i) for i, u in enumerate(users))} == {
        "applied"
    }
    store.refresh()
    assert store.count() == 301
    q = rng.standard_normal(DIM).astype(np.float32)
    for horizon in ("short", "long", "blend"):
        mats = {
            "short": [u.short for u in users],
            "long": [u.long for u in users],
            "blend": [0.25 * u.short + 0.75 * u.long for u in users],
        }
        exact = np.asarray(mats[horizon]) @ q
        top = {users[i].user_id for i in np.argsort(-exact)[:20]}
        got = [(u, s) for u, s in store.audience(q, 20, horizon) if u.startswith("u")]
        assert len({u for u, _ in got} & top) >= 19, horizon
        by_id = {u.user_id: float(e) for u, e in zip(users, exact, strict=True)}
        for uid, score in got:
            assert score == pytest.approx(by_id[uid], rel=1e-3, abs=1e-3)


def test_reads_on_the_event_loop_fail_over_to_the_next_node(store: OpenSearchStore) -> None:
    rng = np.random.default_rng(11)
    store.ensure_index(DIM)
    rec, gone = _rec("x/1 é", 2, rng), _rec("gone", 4, rng)
    many = [f"m{i}" for i in range(150)]
    store.write([Upsert(rec, 0, 1), Upsert(gone, 0, 2)])
    store.write([Upsert(_rec(u, 1, rng), 1, i) for i, u in enumerate(many)])
    store.forget("gone", 0, 3)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused, the next node answers
    users = OpenSearchUsers(store, getter=AsyncGetter([dead, *store.hosts], store.index))
    assert users.async_method(users.get) == users.aget and users.async_method(users.count) is None

    async def reads() -> None:
        assert users.getter is not None
        try:
            assert _same(await users.aget("x/1 é"), rec)  # real-time, no refresh
            for uid in ("gone", "nobody"):
                with pytest.raises(UnknownId):
                    await users.aget(uid)
            blend = await users.avector("x/1 é", "blend")
            assert np.allclose(blend, 0.25 * rec.short + 0.75 * rec.long)
            # concurrent reads coalesce into _mget batches; each answer equals the single read
            asked = ["x/1 é", "gone", "nobody", *many, "x/1 é"] * 3
            sent, read = users.getter.requests, users.getter.reads
            got = await asyncio.gather(*(users.aget(u) for u in asked), return_exceptions=True)
            assert users.getter.reads - read == len(asked)
            assert users.getter.requests - sent == 3  # 153 distinct ids, at most 64 per _mget
            single = {u: await users.aget(u) for u in {*many, "x/1 é"}}  # one by one
            for uid, ans in zip(asked, got, strict=True):
                if uid in ("gone", "nobody"):
                    assert isinstance(ans, UnknownId), uid
                else:
                    assert isinstance(ans, UserRecord) and _same(ans, single[uid]), uid
            users.getter.urls = [dead]
            with pytest.raises(StoreUnavailable):
                await users.aget("x/1 é")
        finally:
            await users.getter.aclose()

    asyncio.run(reads())
    # no index at all: nobody is held (the API before the sink's first write)
    missing = AsyncGetter(store.hosts, f"{store.index}-none")

    async def absent() -> None:
        try:
            assert list(await asyncio.gather(missing.source("a"), missing.source("b"))) == [
                None,
                None,
            ]
        finally:
            await missing.aclose()

    asyncio.run(absent())
