"""Infrastructure faults against real processes (issue #6).

* **Broker restart mid-replay.** A broker of the test's own (own port, own data
  dir; the session broker is untouched) is stopped while a paced replay runs
  and a worker (with a tiny model) and an API replica are busy, then started
  again on the same port and data. Nobody is restarted by hand: the replay's
  producer, the worker and the API reconnect by themselves, and at the end every
  user's version in the worker's changelog and in the API equals its number of
  events. Measured: broker downtime, and the time from the broker answering
  again to the worker consuming again and the API applying records again.
* **API replica crash.** A running ``interest-stream serve`` is SIGKILLed and
  started again: it rebuilds its user index from the compacted output topic and
  serves the same answers. Measured: restart -> ``/readyz`` 200.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers import TAOBAO_HISTORIES, settings_env
from kafka import KafkaProducer

from bench.tooling import read_changelog_windows, wait_for
from interest_stream.core.eventfile import read_events
from interest_stream.core.settings import Settings
from interest_stream.procs import Service, http_get_json, wait_http
from interest_stream.streams.kafka_local.broker import BrokerConfig, free_port, start, stop
from interest_stream.streams.replay import make_producer, replay_events
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

FAST_GROUP = {
    "INTEREST_FAUST_BROKER_SESSION_TIMEOUT": "8",
    "INTEREST_FAUST_BROKER_HEARTBEAT_INTERVAL": "1",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_helpers import tiny_train_config

    from interest_stream.models import train

    out = tmp_path_factory.mktemp("rel-model") / "ckpt"
    train(read_events(TAOBAO_HISTORIES).head(4_000), out, tiny_train_config(seed=6),
          progress=False)  # fmt: skip
    return out


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _worker_consumed(s: Settings) -> float:
    status, text = http_get_json(f"http://127.0.0.1:{s.worker_web_port}/metrics", timeout=1.0)
    return _metric(str(text), "interest_worker_events_consumed_total") if status == 200 else -1.0


def _held(s: Settings) -> bool:
    status, body = http_get_json(f"http://127.0.0.1:{s.worker_web_port}/assignment/")
    return status == 200 and isinstance(body, dict) and bool(body.get("partitions"))


def _api_applied(url: str) -> float:
    status, text = http_get_json(f"{url}/metrics", timeout=1.0)
    ok = status == 200
    return _metric(str(text), 'interest_api_records_total{result="applied"}') if ok else -1.0


def test_broker_restart_mid_replay(
    make_settings: Callable[..., Settings], tiny_model: Path, tmp_path: Path
) -> None:
    cfg = BrokerConfig(data_dir=tmp_path / "own-kafka", port=free_port())
    bootstrap = start(cfg, timeout=180.0).bootstrap
    df_all = read_events(TAOBAO_HISTORIES)
    users = sorted(df_all["user_id"].unique())[:60]
    df: pd.DataFrame = df_all[df_all["user_id"].isin(users)].reset_index(drop=True)
    s = make_settings(kafka_bootstrap=bootstrap, model_dir=tiny_model, api_port=free_port(),
                      worker_web_port=free_port(), flush_ms=10)  # fmt: skip
    url = f"http://127.0.0.1:{s.api_port}"
    logs = tmp_path / "logs"
    worker = api = None
    try:
        ensure_topics(s)
        worker = Service.cli("worker", ["worker"], s, logs, extra_env=FAST_GROUP).start()
        api = Service.cli("api", ["serve"], s, logs).start()
        wait_http(f"{url}/readyz", timeout=120)
        wait_for(lambda: _worker_consumed(s) >= 0, 120, what="worker web up")
        wait_for(lambda: _held(s), 120, what="worker holds partitions")

        errors: list[BaseException] = []
        # a producer that rides out the outage: unlimited retries within 5 minutes
        producer = make_producer(
            s,
            retries=2**31 - 1,
            delivery_timeout_ms=300_000,
            request_timeout_ms=10_000,
            reconnect_backoff_max_ms=1000,
        )

        def publish() -> None:
            try:
                replay_events(df, s, rate=len(df) / 30.0, producer=producer)
            except BaseException as exc:
                errors.append(exc)

        replay = threading.Thread(target=publish, daemon=True)
        replay.start()
        wait_for(lambda: _worker_consumed(s) > len(df) * 0.2, 60, what="a fifth consumed")
        t_down = time.monotonic()
        assert stop(cfg) is True
        time.sleep(5.0)
        start(cfg, timeout=180.0)
        t_up = time.monotonic()
        consumed_at_up, applied_at_up = _worker_consumed(s), _api_applied(url)
        worker_back = api_back = None
        deadline = t_up + 180
        while (worker_back is None or api_back is None) and time.monotonic() < deadline:
            now = time.monotonic()
            if worker_back is None and _worker_consumed(s) > consumed_at_up:
                worker_back = now - t_up
            if api_back is None and _api_applied(url) > applied_at_up:
                api_back = now - t_up
            time.sleep(0.1)
        assert worker_back is not None, worker.log_tail()
        assert api_back is not None, api.log_tail()
        replay.join(240)
        assert not replay.is_alive() and not errors, errors
        producer.close(10)

        expected = {str(u): int(n) for u, n in df.groupby("user_id").size().items()}

        def api_exact() -> bool:
            for u, n in expected.items():
                status, body = http_get_json(f"{url}/v1/users/{u}/interest")
                if status != 200 or body["version"] != n:
                    return False
            return True

        wait_for(api_exact, 180, interval_s=1.0, what="API versions exact after the restart")
        t_exact = time.monotonic() - t_up
        windows = read_changelog_windows(s)
        assert {u: w.version for u, w in windows.items()} == expected
        worker.check()
        api.check()
        load = os.getloadavg()[0]
        print(f"\nbroker restart: {len(df)} events, {len(expected)} users; broker down "
              f"{t_up - t_down:.1f}s (stop + 5 s + start); worker consuming again "
              f"{worker_back:.1f}s and API applying again {api_back:.1f}s after the broker "
              f"answered; all exact {t_exact:.1f}s after; load {load:.1f}")  # fmt: skip
    finally:
        for svc in (api, worker):
            if svc is not None:
                svc.stop()
        stop(cfg)


# --------------------------------------------------------------------------- API crash
DIM = 16


def _record(user: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    short, long = rng.standard_normal(DIM), rng.standard_normal(DIM)
    return json.dumps({"user_id": user, "version": 1, "event_time": 1, "updated_at": 2,
                       "model_version": "rel-1", "short": short.round(5).tolist(),
                       "long": long.round(5).tolist()}).encode()  # fmt: skip


class Serve:
    """``interest-stream serve`` as a child process (killable)."""

    def __init__(self, settings: Settings, log: Path) -> None:
        env = settings_env(settings)
        env["INTEREST_LOG_LEVEL"] = "WARNING"
        self.out = log.open("ab")
        cli = Path(sys.executable).with_name("interest-stream")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([str(cli), "serve"], env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT)  # fmt: skip

    def wait_ready(self, url: str, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "serve exited"
            try:
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    return time.monotonic() - self.t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("serve not ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()


def test_api_replica_sigkill_rebuilds_from_the_topic(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(api_port=free_port())
    ensure_topics(s)
    n = 20_000
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap, linger_ms=20, acks="all")
    for i in range(n):
        producer.send(s.output_topic, key=f"r{i}".encode(), value=_record(f"r{i}", i))
    for i in range(0, n, 10):  # a newer version for some, a tombstone for others
        value = (
            None
            if i % 20 == 0
            else _record(f"r{i}", i + 1).replace(b'"version": 1', b'"version": 2')
        )
        producer.send(s.output_topic, key=f"r{i}".encode(), value=value)
    producer.flush(60)
    producer.close(5)
    url = f"http://127.0.0.1:{s.api_port}"
    a = Serve(s, tmp_path / "api-1.log")
    try:
        first = a.wait_ready(url)
        body = httpx.get(f"{url}/readyz").json()
        assert body["users"] == n - n // 20
        sample = [f"r{i}" for i in range(0, n, 997)] + ["r0", "r10", "r20"]
        before = {u: httpx.get(f"{url}/v1/users/{u}/interest").json() for u in sample}
        audience = httpx.post(f"{url}/v1/audience", json={"vector": [0.1] * DIM, "k": 25}).json()
        a.kill()
        assert a.proc.returncode == -signal.SIGKILL
        b = Serve(s, tmp_path / "api-2.log")
        try:
            rebuild = b.wait_ready(url)
            assert httpx.get(f"{url}/readyz").json()["users"] == n - n // 20
            after = {u: httpx.get(f"{url}/v1/users/{u}/interest").json() for u in sample}
            assert after == before
            assert after["r0"]["error"] == "unknown_user" and after["r10"]["version"] == 2
            again = httpx.post(f"{url}/v1/audience", json={"vector": [0.1] * DIM, "k": 25})
            assert again.json() == audience
        finally:
            b.stop()
    finally:
        a.stop()
    print(f"\nAPI replica crash: {n} users ({n + n // 10} records); first start ready "
          f"{first:.1f}s, after SIGKILL rebuilt and ready {rebuild:.1f}s; "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
