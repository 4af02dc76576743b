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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from helpers import TAOBAO_HISTORIES
from kafka import KafkaProducer

from interest_stream.eventfile import read_events
from interest_stream.procs import Service, http_get_json, wait_http
from interest_stream.settings import Settings
from streams.kafka_local.broker import free_port
from streams.replay import replay_events
from streams.state import read_topic, wait_for
from streams.topics import ensure_topics
from streams.worker import read_changelog_windows

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
    from models import train
    from models.testing import tiny_train_config

    out = tmp_path_factory.mktemp("forget-model") / "ckpt"
    train(read_events(TAOBAO_HISTORIES).head(10_000), out, tiny_train_config(seed=5),
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
        for user in (gone, reborn):
            r = http.delete(f"/v1/users/{user}", headers=auth)
            assert r.status_code == 200, r.text
            assert r.json() == {"user_id": user, "removed": True, "tombstone": True}

        # worker: the window is deleted (view 404, tombstone in the changelog)
        wait_for(lambda: worker_window(s, gone) == 404 and worker_window(s, reborn) == 404, 60,
                 what="windows deleted in the worker")  # fmt: skip
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
        http.close()
    finally:
        api.stop()
        worker.stop()
