"""``INTEREST_API_PROCESSES=2``: two whole replicas behind one port, against a real broker.

``interest-stream serve`` runs as a child process; the test checks that the parent keeps
two API processes, that answers over fresh connections (whichever process accepts them)
all come from a full replica of the output topic, that SIGTERM stops everything cleanly,
and that one process dying ends the service with an error (the supervisor restarts it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
USERS = 20


def _children(pid: int) -> list[int]:
    """The API processes under ``pid`` (not multiprocessing's resource tracker)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    out = []
    for kid in (int(p) for p in text.split()):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(kid)
    return out


def _start(settings: Settings, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    rng = np.random.default_rng(0)
    model = write_item_vectors(tmp_path / "model", [f"i{j}" for j in range(200)],
                               rng.standard_normal((200, DIM)).astype(np.float32),
                               model_version="it-1")  # fmt: skip
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             key_serializer=str.encode)  # fmt: skip
    for i in range(USERS):
        rec = {"user_id": f"u{i}", "version": 1, "event_time": 1_700_000_000_000,
               "updated_at": 1_700_000_000_001, "model_version": "it-1",
               "short": rng.standard_normal(DIM).tolist(),
               "long": rng.standard_normal(DIM).tolist()}  # fmt: skip
        producer.send(settings.output_topic, key=f"u{i}", value=json.dumps(rec).encode())
    producer.flush(10)
    producer.close(5)
    port = free_port()
    env = settings_env(settings)
    env.update(INTEREST_API_PORT=str(port), INTEREST_API_HOST="127.0.0.1",
               INTEREST_MODEL_DIR=str(model), INTEREST_API_PROCESSES="2")  # fmt: skip
    log = tmp_path / "api.log"
    cli = Path(sys.executable).with_name("interest-stream")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(cli), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


@contextmanager
def _two_processes(settings: Settings, tmp_path: Path) -> Iterator[Service]:
    """The service with its two API processes up; killed at the end if still running."""
    proc, url, log = _start(settings, tmp_path)
    try:
        _wait(lambda: len(_children(proc.pid)) >= 2, "two API processes", log)
        yield Service(proc, url, log, _children(proc.pid))
    finally:
        _stop(proc)


@dataclass
class Service:
    """A running ``serve`` parent, its URL, its log and its API processes."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    kids: list[int]


def _wait(cond: Callable[[], bool], what: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text(errors='replace')}")


def test_two_api_processes_share_the_port(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with _two_processes(make_settings(), tmp_path) as svc:
        proc, url, kids = svc.proc, svc.url, svc.kids

        def ready_everywhere() -> bool:  # fresh connections: either process may accept
            return all(httpx.get(f"{url}/readyz", timeout=5).status_code == 200
                       for _ in range(8))  # fmt: skip

        _wait(ready_everywhere, "both replicas ready", svc.log)
        for i in range(USERS):  # each on a new connection, whichever process takes it
            r = httpx.get(f"{url}/v1/users/u{i}/recommendations?k=3", timeout=5)
            assert r.status_code == 200, r.text
            assert len(r.json()["items"]) == 3
        assert _children(proc.pid) == kids
        assert len(kids) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, svc.log.read_text(errors="replace")
        assert not any(Path(f"/proc/{k}").exists() and _alive(k) for k in kids)


def test_one_process_dying_stops_the_service(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with _two_processes(make_settings(), tmp_path) as svc:
        _wait(lambda: httpx.get(f"{svc.url}/readyz", timeout=5).status_code == 200, "ready",
              svc.log)  # fmt: skip
        os.kill(svc.kids[0], signal.SIGKILL)
        try:
            code = svc.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(svc.log.read_text(errors="replace")) from None
        assert code != 0  # the supervisor (systemd, Kubernetes) starts it again
        assert not any(Path(f"/proc/{k}").exists() and _alive(k) for k in svc.kids)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the parent if still running; its children stop when they see it gone."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _alive(pid: int) -> bool:
    """Not a zombie (``/proc/<pid>/stat`` state other than Z)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_processes_stop_when_the_parent_is_killed(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with _two_processes(make_settings(), tmp_path) as svc:
        svc.proc.kill()  # SIGKILL: the parent cannot stop them; they notice it is gone
        svc.proc.wait(10)
        _wait(lambda: not any(_alive(k) for k in svc.kids), "the orphans to stop", svc.log)
