"""The demo's start-up pieces: the quiet broker probe, the model folder, the rollout copy."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from interest_stream.core.checkpoint import checkpoint_version
from interest_stream.core.errors import InterestStreamError, KafkaUnavailable
from interest_stream.core.settings import Settings
from interest_stream.demo.feed import _shifted, ensure_kafka
from interest_stream.demo.model import MARKER_FILE, checkpoint_kind, publish_checkpoint
from interest_stream.demo.options import DemoOptions
from interest_stream.index import ItemIndex, write_item_vectors
from interest_stream.streams.kafka_local import free_port, probe


@pytest.fixture
def not_kafka() -> Iterator[int]:
    """A TCP server on loopback that answers like an HTTP server, not like Kafka."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    done = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join(timeout=5)
    server.close()


def test_nothing_listening_is_known_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kafka")
    t0 = time.monotonic()
    assert probe.broker_answers(f"127.0.0.1:{free_port()}") is None
    assert time.monotonic() - t0 < 1.0  # a refused connect, not a client's retries
    assert probe.listening(f"bad-address,127.0.0.1:{free_port()}") is None
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_listener_that_is_not_kafka(not_kafka: int, caplog: pytest.LogCaptureFixture) -> None:
    address = f"127.0.0.1:{not_kafka}"
    assert probe.listening(f"127.0.0.1:{free_port()},{address}") == address
    assert probe.broker_answers(address) is False
    said: list[str] = []
    with pytest.raises(KafkaUnavailable, match="does not answer as a Kafka broker"):
        ensure_kafka(Settings(kafka_bootstrap=address), DemoOptions(say=said.append))
    assert said == [] and [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_remote_address_is_never_replaced_by_a_local_broker() -> None:
    with pytest.raises(KafkaUnavailable, match="no Kafka broker listens"):
        ensure_kafka(Settings(kafka_bootstrap="host.invalid:9092"), DemoOptions(say=print))


def test_quiet_kafka_logs_restores_the_level() -> None:
    logger = logging.getLogger("kafka")
    before = logger.level
    with probe.quiet_kafka_logs():
        assert not logger.isEnabledFor(logging.ERROR)
    assert logger.level == before


def _checkpoint(folder: Path, version: str, meta: bool = True) -> Path:
    ids = [f"i{j}" for j in range(20)]
    vecs = np.random.default_rng(3).standard_normal((20, 4)).astype(np.float32)
    return write_item_vectors(
        folder,
        ids,
        vecs,
        model_version=version,
        meta={i: {"category": "c"} for i in ids} if meta else None,
    )


def test_publish_and_kind(tmp_path: Path) -> None:
    served = tmp_path / "model"
    assert checkpoint_kind(served) is None
    version = publish_checkpoint(_checkpoint(tmp_path / "quick", "q1"), served, "quick")
    assert version == "q1" == checkpoint_version(served)
    assert checkpoint_kind(served) == "quick"
    assert json.loads((served / MARKER_FILE).read_text()) == {
        "kind": "quick",
        "model_version": "q1",
    }
    assert ItemIndex.from_checkpoint(served).model_version == "q1"
    # the full model replaces every file; files it lacks go; no temporary file stays
    publish_checkpoint(_checkpoint(tmp_path / "full", "f1", meta=False), served, "full")
    assert checkpoint_kind(served) == "full"
    assert ItemIndex.from_checkpoint(served).model_version == "f1"
    assert sorted(p.name for p in served.iterdir()) == sorted(
        ["config.json", "items.json", "item_vectors.npy", MARKER_FILE]
    )
    # a checkpoint written over by something else is no longer "the quick model"
    publish_checkpoint(_checkpoint(tmp_path / "q2", "q2"), served, "quick")
    _checkpoint(served, "other")
    assert checkpoint_kind(served) == "full"
    with pytest.raises(InterestStreamError, match="holds no checkpoint"):
        publish_checkpoint(tmp_path / "empty", served, "full")


def test_later_passes_are_shifted_in_time() -> None:
    import pandas as pd

    df = pd.DataFrame({"user_id": ["u", "u"], "ts": [1_000, 61_000]})
    assert _shifted(df, 0) is df
    again = _shifted(df, 2)
    span = 60_000 + 3_600_000
    assert again["ts"].tolist() == [1_000 + 2 * span, 61_000 + 2 * span]
