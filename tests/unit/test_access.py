"""Access and secrets (issue #6): constant-time admin token, no secret in logs, SASL/TLS wiring.

* the admin bearer token is compared with :func:`hmac.compare_digest` (the call
  is observed, not assumed from the source);
* neither the admin token nor the SASL password ever reaches a log record, the
  settings' ``repr`` or the masked settings dump, whatever the request;
* the SASL/TLS settings reach every Kafka client: the Faust worker's
  credentials (and the aiokafka keyword arguments Faust derives from them), and
  the kafka-python producers/consumers/admin built by the API, the command
  publisher, the replay tool and the topic tools.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from pathlib import Path
from typing import Any, ClassVar

import certifi
import faust
import numpy as np
import pytest
from fastapi.testclient import TestClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from interest_stream.api import create_app, get_state
from interest_stream.api.forget import KafkaPublisher
from interest_stream.core.kafka import faust_credentials
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex
from interest_stream.streams import worker as worker_mod
from interest_stream.streams.commands import CommandPublisher

ADMIN = "adm1n-T0ken-never-logged-93f1"
PASSWORD = "sasl-pa55word-never-logged-17c2"


class FakePublisher:
    def tombstone(self, user_id: str) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def client() -> Any:
    items = ItemIndex(["i1", "i2"], np.eye(2, 4, dtype=np.float32), model_version="m",
                      backend="numpy")  # fmt: skip
    app = create_app(Settings(admin_token=ADMIN), item_index=items, start_consumer=False,
                     publisher=FakePublisher(), forget_hooks=[lambda u: None])  # fmt: skip
    get_state(app).users.upsert("u1", 1, np.ones(4, np.float32), np.ones(4, np.float32), {})
    with TestClient(app) as c:
        yield c


def test_admin_token_is_compared_in_constant_time(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert (
        client.delete("/v1/users/u1", headers={"Authorization": "Bearer wrong"}).status_code == 403
    )
    assert calls and calls[-1] == (b"wrong", ADMIN.encode())
    ok = client.delete("/v1/users/u1", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200 and len(calls) == 2


def test_secrets_never_reach_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    near_miss = ADMIN[:-1] + "X"
    for token in (ADMIN, near_miss, ADMIN + ADMIN):
        client.delete("/v1/users/u1", headers={"Authorization": f"Bearer {token}"})
        client.delete("/v1/users/nobody", headers={"Authorization": f"Bearer {token}"})
        client.get("/v1/users/u1/interest", headers={"Authorization": f"Bearer {token}"})
    assert caplog.records, "the requests above must log something (forgot user ...)"
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert ADMIN not in text and near_miss not in text
    s = Settings(admin_token=ADMIN, kafka_security_protocol="SASL_PLAINTEXT",
                 kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u",
                 kafka_sasl_password=PASSWORD)  # fmt: skip
    for shown in (repr(s), str(s), str(s.safe_dump())):
        assert ADMIN not in shown and PASSWORD not in shown


def _sasl_ssl(tmp_path: Path) -> Settings:
    return Settings(
        kafka_bootstrap="broker1:9093,broker2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc-interest",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=Path(certifi.where()),
        state_dir=tmp_path / "state",
        store="memory",
        worker_web_port=0,
    )


def test_sasl_ssl_reaches_the_faust_worker_and_aiokafka(tmp_path: Path) -> None:
    s = _sasl_ssl(tmp_path)
    w = worker_mod.WindowWorker(s, partitions=2)
    creds = w.app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "svc-interest"
    assert auth["sasl_plain_password"] == PASSWORD
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    # TLS without SASL
    tls = Settings(**{**s.model_dump(), "kafka_security_protocol": "SSL",
                      "kafka_sasl_mechanism": None, "kafka_sasl_password": None})  # fmt: skip
    tls_auth = credentials_to_aiokafka_auth(faust_credentials(tls))
    assert tls_auth["security_protocol"] == "SSL"
    plain = Settings(**{**tls.model_dump(), "kafka_security_protocol": "PLAINTEXT"})
    assert faust_credentials(plain) is None


class _Recorder:
    """Stands in for a kafka-python client class; records its keyword arguments."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _Recorder.seen.append(kwargs)

    def send(self, *args: Any, **kwargs: Any) -> Any:
        class _Done:
            def get(self, timeout: float | None = None) -> None:
                return None

        return _Done()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_sasl_ssl_reaches_every_kafka_python_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kafka

    from interest_stream.streams import replay, topics

    s = _sasl_ssl(tmp_path)
    _Recorder.seen = []
    monkeypatch.setattr(kafka, "KafkaProducer", _Recorder)
    monkeypatch.setattr(replay, "KafkaProducer", _Recorder)
    monkeypatch.setattr(topics, "KafkaAdminClient", _Recorder)
    KafkaPublisher(s).tombstone("u1")  # API tombstones
    CommandPublisher(s).forget("u1")  # API -> worker commands
    replay.make_producer(s)  # replay tool
    topics.admin_client(s)  # topic tools
    assert len(_Recorder.seen) == 4
    for kw in _Recorder.seen:
        assert kw["security_protocol"] == "SASL_SSL"
        assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kw["sasl_plain_username"] == "svc-interest"
        assert kw["sasl_plain_password"] == PASSWORD
        assert kw["ssl_cafile"] == certifi.where()
    # the API's output-topic consumer and the worker's changelog reader
    import interest_stream.api.consumer as consumer_mod
    from interest_stream.api.consumer import OutputConsumer
    from interest_stream.api.metrics import ApiMetrics
    from interest_stream.index import UserIndex

    monkeypatch.setattr(kafka, "KafkaConsumer", _Recorder)
    monkeypatch.setattr(consumer_mod, "KafkaConsumer", _Recorder)
    OutputConsumer(s, UserIndex(4), ApiMetrics(users=lambda: 0.0, items=lambda: 0.0),
                   dim=4)._new_consumer()  # fmt: skip
    assert len(_Recorder.seen) == 5
    last = _Recorder.seen[-1]
    assert last["security_protocol"] == "SASL_SSL" and last["sasl_plain_password"] == PASSWORD
    assert last["bootstrap_servers"] == ["broker1:9093", "broker2:9093"]
