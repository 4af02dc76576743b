"""The demo's broker and event stream: find or start Kafka quietly, replay the file in passes.

:func:`ensure_kafka` looks for a broker with a plain TCP connect (milliseconds when
nothing listens) and a raw ``Metadata`` request (no Kafka client, so no "Connection
refused" log lines), and starts a local one when nothing listens on this machine.
:class:`Feed` replays the events in a thread: the first pass at the demo's rate, then
the same events again, shifted in time, at a calm pace until the demo stops, so the
stream keeps flowing while the full model trains and rolls out.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from interest_stream.core.errors import InterestStreamError, KafkaUnavailable
from interest_stream.core.settings import Settings
from interest_stream.demo.options import DemoOptions

if TYPE_CHECKING:
    import pandas as pd

    from interest_stream.streams.kafka_local import BrokerConfig

__all__ = ["CALM_RATE", "Feed", "ensure_kafka"]

#: Events per second of the passes after the first one.
CALM_RATE = 300.0
#: Seconds of events per ``replay_events`` call (the feed checks for a stop in between).
CHUNK_S = 2.0
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def ensure_kafka(settings: Settings, opts: DemoOptions) -> tuple[Settings, BrokerConfig | None]:
    """Use the broker at ``INTEREST_KAFKA_BOOTSTRAP``, or start a local one.

    Returns:
        The settings (bootstrap of the broker in use) and the local broker's
        configuration when the demo started it (``None`` otherwise).

    Raises:
        KafkaUnavailable: Something that is not Kafka listens at the address, or
            nothing listens at a remote address.
    """
    from interest_stream.streams.kafka_local import broker, probe

    bootstrap = settings.kafka_bootstrap
    answer = probe.broker_answers(bootstrap)
    if answer is None:
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        if host not in _LOCAL_HOSTS or not port.isdigit():
            raise KafkaUnavailable(
                f"no Kafka broker listens at {bootstrap} (INTEREST_KAFKA_BOOTSTRAP); "
                "start it, or unset the variable for a local one"
            )
        cfg = broker.BrokerConfig(port=int(port))
        first = "" if broker.is_installed(cfg) else " (first run: downloading its jars)"
        opts.say(f"[kafka] nothing listens at {bootstrap}: starting a local Apache Kafka{first}")
        st = broker.start(cfg, timeout=180.0, progress=True)
        opts.say(f"[kafka] up at {st.bootstrap} after {opts.elapsed():.0f}s (log: {st.log_file})")
        return settings.model_copy(update={"kafka_bootstrap": st.bootstrap}), cfg
    if not answer and settings.kafka_security_protocol == "PLAINTEXT":
        raise KafkaUnavailable(
            f"something listens at {bootstrap} but does not answer as a Kafka broker; "
            "free the port or point INTEREST_KAFKA_BOOTSTRAP at your broker"
        )
    if not answer:  # TLS / SASL: only a real client can tell; keep its retries quiet
        from interest_stream.streams.topics import admin_client

        with probe.quiet_kafka_logs():
            admin_client(settings, timeout_s=10.0).close()
    opts.say(f"[kafka] using the broker at {bootstrap}")
    return settings, None


def _shifted(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """Pass ``n`` (0-based) of the events: the same rows, ``n`` spans of time later."""
    if n == 0:
        return df
    span = int(df["ts"].max() - df["ts"].min()) + 3_600_000
    return df.assign(ts=df["ts"] + n * span)


class Feed:
    """Replays the events in a thread, pass after pass, until :meth:`stop`.

    Attributes:
        first_done: Set when the first pass is acknowledged (or failed).
        stats: ``replay`` (the first pass: sent, seconds, rate, per topic),
            ``passes`` started, ``sent`` in all; ``error`` if the replay failed.
    """

    def __init__(self, df: pd.DataFrame, settings: Settings, rate: float) -> None:
        self.df, self.settings, self.rate = df, settings, rate
        self.first_done = threading.Event()
        self.stats: dict[str, Any] = {"passes": 0, "sent": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-feed", daemon=True)

    def start(self) -> Feed:
        """Start replaying; returns ``self``."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the chunk in flight (acknowledged by then)."""
        self._stop.set()
        self._thread.join(timeout=60.0)

    def _run(self) -> None:
        from interest_stream.streams.replay import make_producer

        producer = None
        try:
            producer = make_producer(self.settings)
            n = 0
            while not self._stop.is_set():
                self._pass(producer, n)
                n += 1
        except Exception as exc:  # the thread reports anything to the demo, which stops
            self.stats["error"] = str(exc) if isinstance(exc, InterestStreamError) else repr(exc)
        finally:
            self.first_done.set()
            if producer is not None:
                producer.close(timeout=10)

    def _pass(self, producer: Any, n: int) -> None:
        from interest_stream.streams.replay import replay_events

        df = _shifted(self.df, n)
        rate = self.rate if n == 0 else min(self.rate, CALM_RATE)
        step = max(100, int(rate * CHUNK_S))
        self.stats["passes"] = n + 1
        sent, t0 = 0, time.monotonic()
        per_topic: dict[str, int] = {}
        for start in range(0, len(df), step):
            if self._stop.is_set():
                return
            st = replay_events(df.iloc[start : start + step], self.settings, rate=rate,
                               producer=producer)  # fmt: skip
            sent += st.sent
            self.stats["sent"] += st.sent
            for topic, count in st.per_topic.items():
                per_topic[topic] = per_topic.get(topic, 0) + count
        if n == 0:
            seconds = time.monotonic() - t0
            self.stats["replay"] = {"sent": sent, "seconds": round(seconds, 1),
                                    "rate": round(sent / max(seconds, 1e-9), 1),
                                    "per_topic": per_topic}  # fmt: skip
            self.first_done.set()
