"""Shared fixtures: a real Kafka broker for the session and a settings factory.

The broker is the project's own local Kafka (``streams.kafka_local``), started
once per test session on free loopback ports in a temporary data folder and
stopped at the end. Set ``INTEREST_TEST_BOOTSTRAP=host:port`` to use a broker
of your own instead. There is no skip: when the broker cannot start, every
integration test fails with the broker log's tail (under ``CI=true`` and
everywhere else alike).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interest_stream.core.settings import Settings


def pytest_configure(config: pytest.Config) -> None:
    """Make sure tests never read the developer's own INTEREST_* environment by accident."""
    for key in list(os.environ):
        if key.startswith("INTEREST_") and key not in (
            "INTEREST_TEST_BOOTSTRAP",
            "INTEREST_DATA_DIR",
            "INTEREST_KAFKA_HOME",
            "INTEREST_OPENSEARCH_HOME",
            "INTEREST_TEST_OPENSEARCH_URL",
            "INTEREST_TEST_SEED",
            "INTEREST_PRESSURE_REPEAT",
            "INTEREST_PRESSURE_HOGS",
        ):
            del os.environ[key]


_BROKER_PID: list[int] = []


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for the whole session."""
    external = os.environ.get("INTEREST_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    from interest_stream.streams.kafka_local.broker import BrokerConfig, free_port, start, stop

    data_dir = tmp_path_factory.mktemp("kafka")
    cfg = BrokerConfig(data_dir=data_dir, port=free_port())
    status = start(cfg, timeout=180.0)
    if status.pid is not None:
        _BROKER_PID.append(status.pid)
    try:
        yield status.bootstrap
    finally:
        stop(cfg)


@pytest.fixture(scope="session")
def opensearch_url() -> Iterator[str]:
    """URL of a real one-node OpenSearch (k-NN) for the session, started on first use.

    ``INTEREST_TEST_OPENSEARCH_URL`` points at a cluster of your own instead. As with
    Kafka there is no skip: a node that cannot start fails the tests that need it.
    Its data folder is outside pytest's 0700 temporary root, so that the node's
    unprivileged user (when the tests run as root) can enter it.
    """
    external = os.environ.get("INTEREST_TEST_OPENSEARCH_URL")
    if external:
        yield external
        return
    import shutil
    import tempfile

    from interest_stream.core.kafka import free_port
    from interest_stream.index.opensearch_local import ClusterConfig, start, stop

    data_dir = Path(tempfile.mkdtemp(prefix="interest-os-test-"))
    data_dir.chmod(0o755)
    cfg = ClusterConfig(data_dir=data_dir, http_port=free_port(), transport_port=free_port())
    try:
        yield start(cfg, timeout=240.0).url
    finally:
        stop(cfg)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def kafka_broker_pid(kafka_bootstrap: str) -> int | None:
    """Process id of the session's broker (``None`` for an external one)."""
    return _BROKER_PID[-1] if _BROKER_PID else None


@pytest.fixture
def make_settings(tmp_path: Path, kafka_bootstrap: str) -> Callable[..., Settings]:
    """Factory of Settings with unique topics, app id and state dir for one test.

    Topics are namespaced (``t<hex>.events.view`` ...), so tests never see each
    other's messages; ``events.<type>`` suffixes keep the implied event types.
    """
    made: list[int] = []

    def factory(**overrides: Any) -> Settings:
        ns = f"t{uuid.uuid4().hex[:10]}"
        made.append(1)
        base: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "event_topics": tuple(
                f"{ns}.events.{t}" for t in ("view", "click", "cart", "fav", "purchase")
            ),
            "dlq_topic": f"{ns}.events.dlq",
            "output_topic": f"{ns}.user-interest",
            "app_id": f"{ns}-app",
            "state_dir": tmp_path / f"state-{len(made)}",
            "worker_web_port": 0,
        }
        base.update(overrides)
        return Settings(**base)

    return factory
