"""Right to be forgotten, everywhere, against a real broker (issue #6).

A worker (``interest-stream worker``, with a tiny trained model) and an API
(``interest-stream serve``) run as child processes. After a replay, two users are
forgotten through ``DELETE /v1/users/{id}``:

* ``gone`` must disappear from the worker's table (web view 404, latest
  changelog value a tombstone), from the API (404) and from the output topic (its
  last record a tombstone), and stay gone after both processes are restarted
  (the worker is SIGKILLed, so its startup sweep and changelog recovery run);
* ``reborn`` gets a late event stamped *before* the forget (dropped: pre-forget
  data never comes back) and then a fresh event (a new life: version 1).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from helpers import TAOBAO_HISTORIES
from kafka import KafkaProducer

from bench.tooling import read_topic, wait_for
from interest_stream.core.eventfile import read_events
from interest_stream.core.settings import Settings
from interest_stream.procs import Service, http_get_json, wait_http
from interest_stream.streams.changelog import read_changelog_windows
from interest_stream.streams.kafka_local.broker import free_port
from interest_stream.streams.replay import replay_events
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

TOKEN = "forget-test-token-7f3a"
N_USERS = 30
FAST_GROUP = {
    "INTEREST_FAUST_BROKER_SESSION_TIMEOUT": "8",
    "INTEREST_FAUST_BROKER_HEARTBEAT_INTERVAL": "1",
}


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    df = read_events(TAOBAO_HISTORIES)
    users = sorted(df["user_id"].unique())[:N_USERS]
    return df[df["user_id"].isin(users)].reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_helpers import tiny_train_config

    from interest_stream.models import train

    out = tmp_path_factory.mktemp("forget-model") / "ckpt"
    train(read_events(TAOBAO_HISTORIES).head(4_000), out, tiny_train_config(seed=5),
          progress=False)  # fmt: skip
    return out


def last_output(settings: Settings) -> dict[str, bytes | None]:
    """Latest value per key of the output topic (None = tombstone)."""
    latest: dict[str, bytes | None] = {}
    for rec in read_topic(settings, settings.output_topic):
        assert rec.key is not None
        latest[rec.key.decode()] = rec.value
    return latest


def worker_window(settings: Settings, user: str) -> int:
    status, _ = http_get_json(f"http://127.0.0.1:{settings.worker_web_port}/windows/{user}/")
    return status


def api_version(url: str, user: str) -> Any:
    status, body = http_get_json(f"{url}/v1/users/{user}/interest")
    return body["version"] if status == 200 else status


def metric(settings: Settings, name: str) -> float:
    status, text = http_get_json(f"http://127.0.0.1:{settings.worker_web_port}/metrics")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_forget_everywhere_and_after_restarts(
    make_settings: Callable[..., Settings],
    events: pd.DataFrame,
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    s = make_settings(model_dir=tiny_model, admin_token=TOKEN, api_port=free_port(),
                      worker_web_port=free_port(), long_refresh_s=0.0, flush_ms=10)  # fmt: skip
    ensure_topics(s)
    logs = tmp_path / "logs"
    url = f"http://127.0.0.1:{s.api_port}"
    expected = {str(u): int(n) for u, n in events.groupby("user_id").size().items()}
    gone, reborn = sorted(expected)[3], sorted(expected)[7]
    others = [u for u in expected if u not in (gone, reborn)]

    worker = Service.cli("worker", ["worker"], s, logs, extra_env=FAST_GROUP).start()
    api = Service.cli("api", ["serve"], s, logs).start()
    try:
        wait_http(f"{url}/readyz", timeout=120)
        wait_http(f"http://127.0.0.1:{s.worker_web_port}/healthz/", timeout=120)
        replay_events(events, s)
        wait_for(lambda: all(api_version(url, u) == n for u, n in expected.items()), 120,
                 what="all users in the API")  # fmt: skip
        assert worker_window(s, gone) == 200

        # the admin token is required
        http = httpx.Client(base_url=url, timeout=30.0)
        assert http.delete(f"/v1/users/{gone}").status_code == 401
        assert http.delete(f"/v1/users/{gone}",
                           headers={"Authorization": "Bearer nope"}).status_code == 403  # fmt: skip
        before_forget_ms = int(time.time() * 1000) - 1000
        auth = {"Authorization": f"Bearer {TOKEN}"}
        t_delete = time.monotonic()
        for user in (gone, reborn):
            r = http.delete(f"/v1/users/{user}", headers=auth)
            assert r.status_code == 200, r.text
            assert r.json() == {"user_id": user, "removed": True, "tombstone": True}

        # worker: the window is deleted (view 404, tombstone in the changelog)
        wait_for(lambda: worker_window(s, gone) == 404 and worker_window(s, reborn) == 404, 60,
                 what="windows deleted in the worker")  # fmt: skip
        forget_s = time.monotonic() - t_delete
        windows = read_changelog_windows(s)
        assert gone not in windows and reborn not in windows
        assert all(windows[u].version == expected[u] for u in others)
        assert metric(s, "interest_worker_users_forgotten_total") == 2
        # API: 404 at once
        assert http.get(f"/v1/users/{gone}/interest").status_code == 404
        # output topic: the worker's tombstone is the last record (a flush in flight is dropped)
        time.sleep(2.0)
        latest = last_output(s)
        assert latest[gone] is None and latest[reborn] is None
        assert all(latest[u] is not None for u in others)

        # reborn: a late event stamped before the forget is dropped; a fresh one is a new life
        producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all")
        ev = {"user_id": reborn, "item_id": "late-item", "event_type": "view",
              "ts": 1_511_600_000_000}  # fmt: skip
        producer.send(s.event_topics[0], key=reborn.encode(), value=json.dumps(ev).encode(),
                      timestamp_ms=before_forget_ms)  # fmt: skip
        producer.flush(10)
        wait_for(lambda: metric(s, "interest_worker_events_forgotten_total") >= 1, 60,
                 what="pre-forget event dropped")  # fmt: skip
        assert worker_window(s, reborn) == 404
        assert api_version(url, reborn) == 404
        ev = {**ev, "item_id": "fresh-item", "event_type": "click"}
        producer.send(s.event_topics[1], key=reborn.encode(), value=json.dumps(ev).encode())
        producer.flush(10)
        producer.close(5)
        wait_for(lambda: api_version(url, reborn) == 1, 60, what="reborn user's new life")
        status, body = http_get_json(f"http://127.0.0.1:{s.worker_web_port}/windows/{reborn}/")
        assert status == 200 and body["version"] == 1, body

        # restart both: the worker is SIGKILLed (changelog + RocksDB recovery, startup sweep)
        worker.kill()
        api.stop()
        worker = Service.cli("worker2", ["worker"], s, logs, extra_env=FAST_GROUP).start()
        api = Service.cli("api2", ["serve"], s, logs).start()
        wait_http(f"{url}/readyz", timeout=120)
        wait_for(lambda: worker_window(s, others[0]) == 200, 120, what="worker 2 holds the users")
        time.sleep(8.0)  # the startup sweep re-sends every local user within a few seconds
        assert worker_window(s, gone) == 404
        assert http.get(f"/v1/users/{gone}/interest").status_code == 404
        assert api_version(url, reborn) == 1
        windows = read_changelog_windows(s)
        assert gone not in windows and windows[reborn].version == 1
        latest = last_output(s)
        assert latest[gone] is None
        assert json.loads(latest[reborn] or b"{}")["version"] == 1
        worker.check()
        api.check()
        # the sweep lists every key of the store; the positions record is not a window
        assert "corrupt window" not in (logs / "worker2.log").read_text()
        http.close()
        print(f"\nforget: 2 DELETEs -> both windows gone in the worker in {forget_s:.2f}s; "
              f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    finally:
        api.stop()
        worker.stop()


# --------------------------------------------------------------------------- in-process
# The worker's forget logic on an in-memory store with a recording producer (no broker):
# same-batch rebirth, pre-forget drops, re-delivered commands, malformed commands.
class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.offsets: dict[tuple[str, int | None], int] = {}

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, ts: Any, headers: Any) -> Any:  # fmt: skip
        import asyncio
        from types import SimpleNamespace

        off = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = off + 1
        self.sent.append((topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(offset=off))
        return fut


def _run_batches(tmp_path: Path, batches: list[list[tuple[str, int, int, bytes, bytes | None]]]
                 ) -> tuple[Any, _Producer, list[Any], list[dict[str, int]]]:  # fmt: skip
    """Feed (topic, offset, kafka_ts_ms, key, value) batches to an in-memory worker."""
    import asyncio

    import faust
    from faust.types import TP
    from faust.types.tuples import Message

    from interest_stream.streams.worker import WindowWorker

    s = Settings(event_topics=("x.events.view",), dlq_topic="x.dlq", output_topic="x.out",
                 app_id="fx", store="memory", state_dir=tmp_path, worker_web_port=0)  # fmt: skip
    forgotten: list[dict[str, int]] = []
    w = WindowWorker(s, partitions=1, on_forget=lambda users: forgotten.append(dict(users)))
    prod = _Producer()
    w.app._producer = prod
    results = []

    async def go() -> None:
        for batch in batches:
            evs = []
            for topic, offset, ts_ms, key, value in batch:
                msg = Message(topic, 0, offset, ts_ms / 1000.0, 0, None, key, value, None,
                              tp=TP(topic, 0))  # fmt: skip
                evs.append(faust.Event(w.app, key, value, None, msg))
            results.append(await w._process(evs))

    asyncio.run(go())
    return w, prod, results, forgotten


def _ev(user: str, item: str, eid: str) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "ts": 1_511_600_000_000,
                       "event_id": eid}).encode()  # fmt: skip


def test_forget_logic_in_process(tmp_path: Path) -> None:
    from interest_stream.streams.commands import encode_forget

    v, c = "x.events.view", "fx.commands"
    w, prod, res, forgotten = _run_batches(tmp_path, [
        # batch 1: two events of a, one of b
        [(v, 0, 1000, b"a", _ev("a", "i1", "e1")), (v, 1, 1001, b"a", _ev("a", "i2", "e2")),
         (v, 2, 1002, b"b", _ev("b", "i1", "e3"))],
        # batch 2: an event of a, the forget (ts 2000), a late pre-forget event (ts 1500),
        # a new-life event (ts 2500), and a malformed command
        [(v, 3, 1003, b"a", _ev("a", "i3", "e4")), (c, 0, 2000, b"a", encode_forget("a")),
         (v, 4, 1500, b"a", _ev("a", "i4", "e5")), (v, 5, 2500, b"a", _ev("a", "i5", "e6")),
         (c, 1, 2600, b"b", b'{"op": "drop-table"}')],
        # batch 3: the forget command re-delivered (same offset) while a new life exists,
        # then a forget of b and its re-delivery in the next batch
        [(c, 0, 2000, b"a", encode_forget("a")), (c, 2, 3000, b"b", encode_forget("b"))],
        [(c, 2, 3000, b"b", encode_forget("b")), (v, 2, 1002, b"b", _ev("b", "i1", "e3"))],
        # batch 5: after a crash, b's pre-forget event re-delivered alone (no command with
        # it): dropped, and nothing at all is written for b (was: an empty window)
        [(v, 2, 1002, b"b", _ev("b", "i1", "e3"))],
    ])  # fmt: skip
    assert res[0].applied == 3
    # a: forgotten mid-batch; the pre-forget event is dropped; the new life has version 1
    assert res[1].forgotten == {"a": 2000} and res[1].forgotten_events == 1
    assert res[1].windows["a"].version == 1
    assert [i.item_id for i in res[1].windows["a"].long()] == ["i5"]
    assert res[1].dlq == 1  # the malformed command, with its reason
    dlq = [json.loads(v or b"") for t, _, v, _ in prod.sent if t == "x.dlq"]
    assert len(dlq) == 1 and "unknown command op" in dlq[0]["error"]
    # batch 3: the re-delivered command of a does not kill a's new life and is not announced
    assert "a" not in res[2].forgotten and res[2].duplicates == 1
    assert w._read_stored(b"a", None) is not None
    assert res[2].forgotten == {"b": 3000}
    assert w._read_stored(b"b", None) is None
    # batch 4: b's re-delivered command is announced again (its window is gone) and its
    # re-delivered pre-forget event is dropped, not resurrected
    assert res[3].forgotten == {"b": 3000} and res[3].forgotten_events == 1
    assert w._read_stored(b"b", None) is None
    assert forgotten == [{"a": 2000}, {"b": 3000}, {"b": 3000}]
    assert res[4].forgotten_events == 1 and res[4].applied == 0 and "b" not in res[4].windows
    assert w._read_stored(b"b", None) is None
    # changelog: b got a tombstone; a's old window was replaced by its new life (version 1)
    # in the same batch, so no old-life value survives either way
    from interest_stream.streams.window import BehaviorWindow, WindowConfig

    log = [(k, v) for t, k, v, _ in prod.sent if t == "fx-windows-changelog"]
    assert [k for k, v in log if v is None] == [b"b"]
    assert [v for k, v in log if k == b"b"][-1] is None  # the tombstone stays b's last word
    a_values = [v for k, v in log if k == b"a"]
    newest = BehaviorWindow.from_bytes(a_values[-1] or b"", WindowConfig())
    assert len(a_values) == 2 and newest.version == 1
    marks = [json.loads(v or b"") for t, _, v, _ in prod.sent if t == "fx-forgotten-changelog"]
    assert marks == [{"at": 2000, "offset": 0}, {"at": 3000, "offset": 2}]
