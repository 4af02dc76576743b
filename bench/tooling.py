"""Look at the worker from outside: its changelog, its topics, its HTTP views, its process.

For tests, benchmarks and tools; nothing here is used by the worker itself.

* :func:`read_changelog_windows` -- every user's latest window, from the
  changelog topic (re-exported from :mod:`interest_stream.streams.changelog`);
* :func:`read_topic` -- all records of a topic, up to its end offsets
  (:func:`interest_stream.core.kafka.read_to_end`; :class:`TopicRecord` re-exported);
* :class:`WorkerProcess` -- run ``python -m interest_stream.streams.worker`` as a child process
  with a :class:`~interest_stream.core.settings.Settings` turned into ``INTEREST_*``
  variables, and query its HTTP views (``/healthz/``, ``/assignment/``,
  ``/windows/{user_id}/``, ``/metrics``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.kafka import TopicReadError, TopicRecord, read_to_end
from interest_stream.core.settings import Settings, settings_environ
from interest_stream.streams.changelog import read_changelog_windows

__all__ = [
    "TopicRecord",
    "WorkerProcess",
    "WorkerProcessError",
    "group_lag",
    "read_changelog_windows",
    "read_topic",
    "settings_environ",
    "wait_for",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class WorkerProcessError(InterestStreamError):
    """A worker process did not start, answer or stop as expected."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout_s: float,
    *,
    interval_s: float = 0.25,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; return it.

    Raises:
        TimeoutError: Not true within ``timeout_s`` (the message names ``what``).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
        time.sleep(interval_s)


def read_topic(settings: Settings, topic: str, *, timeout_s: float = 60.0) -> list[TopicRecord]:
    """All records of ``topic`` from the beginning to the end offsets at call time.

    Raises:
        WorkerProcessError: The topic does not exist or could not be read in time.
    """
    try:
        return read_to_end(settings, topic, timeout_s=timeout_s)
    except TopicReadError as exc:
        raise WorkerProcessError(str(exc)) from exc


def group_lag(settings: Settings) -> int:
    """Messages of the event topics not yet committed by the worker group (``app_id``).

    0 means every event published so far has been processed and its offset
    committed. Partitions without a committed offset count in full.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.app_id,
        enable_auto_commit=False,
        **settings.kafka_client_config(),
    )
    try:
        tps = [
            TopicPartition(t, p)
            for t in settings.event_topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        end = consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            committed = consumer.committed(tp)
            lag += end[tp] - (committed or 0)
        return lag
    finally:
        consumer.close()


class WorkerProcess:
    """A worker child process (``python -m interest_stream.streams.worker``) and its HTTP views.

    Args:
        settings: Settings of the worker (passed as ``INTEREST_*`` variables);
            ``worker_web_port`` must be a real port (not 0).
        log_path: File for the child's stdout and stderr (default: discarded).
        extra_env: More variables, e.g. ``INTEREST_FAUST_BROKER_SESSION_TIMEOUT``.
        cwd: Working directory of the child.
        cpus: Cores the child (and its children) may run on (default: all).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log_path: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        if not settings.worker_web_port:
            raise WorkerProcessError("WorkerProcess needs a fixed worker_web_port (not 0)")
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.cwd = cwd if cwd is not None else Path(__file__).resolve().parent.parent
        self.base_url = f"http://127.0.0.1:{settings.worker_web_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.cpus = set(cpus) if cpus else None

    # --------------------------------------------------------------- process
    def start(self) -> WorkerProcess:
        """Start the child process (does not wait for it to be ready)."""
        env = settings_environ(self.settings)
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # closed in _reap
        out = self._log if self._log is not None else subprocess.DEVNULL
        cpus = self.cpus
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interest_stream.streams.worker"],
            env=env,
            cwd=str(self.cwd),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        log.info("started worker pid %d on %s", self.proc.pid, self.base_url)
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.proc is None:
            raise WorkerProcessError("worker not started")
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 90.0) -> WorkerProcess:
        """Wait until the worker holds at least one partition (and its web server answers).

        Raises:
            WorkerProcessError: The child died or did not get ready in time.
        """

        def ready() -> bool:
            if not self.alive():
                raise WorkerProcessError(f"worker exited with {self.returncode()}{self._tail()}")
            status, body = self.get_json("/assignment/")
            return status == 200 and bool(body.get("partitions"))

        try:
            wait_for(ready, timeout_s, what="worker ready")
        except TimeoutError as exc:
            raise WorkerProcessError(f"{exc}{self._tail()}") from exc
        return self

    def returncode(self) -> int | None:
        """Exit code of the child, ``None`` while it runs."""
        return None if self.proc is None else self.proc.poll()

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (graceful stop) and wait; returns the exit code.

        Raises:
            WorkerProcessError: It did not stop in time (it is then killed).
        """
        return self._stop(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        """SIGKILL (a crash) and wait; returns the exit code."""
        return self._stop(signal.SIGKILL, 30.0)

    def _stop(self, sig: signal.Signals, timeout_s: float) -> int:
        if self.proc is None:
            raise WorkerProcessError("worker not started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired as exc:
                self.proc.kill()
                self.proc.wait(30)
                self._reap()
                raise WorkerProcessError(
                    f"worker pid {self.proc.pid} did not stop within {timeout_s}s{self._tail()}"
                ) from exc
        self._reap()
        return int(self.proc.returncode)

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- worker log tail ---\n" + "\n".join(text)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log (empty without a log file)."""
        return self._tail(lines)

    def __enter__(self) -> WorkerProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.alive():
            self.kill()
        self._reap()

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """``GET path`` on the worker; ``(status, body)``, status 0 if it does not answer."""
        url = self.base_url + urllib.parse.quote(path, safe="/?=&")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, b""

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        """``GET path`` and decode a JSON object (``{}`` when there is none)."""
        status, body = self.get(path)
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        return status, data if isinstance(data, dict) else {"value": data}

    def metrics(self) -> dict[str, float]:
        """Samples of ``/metrics`` without labels, name -> value (``{}`` if it does not answer)."""
        status, body = self.get("/metrics")
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#") or "{" in line:
                continue
            name, _, value = line.partition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
        return out

    def partitions(self) -> list[int]:
        """Event-topic partitions the worker holds (``[]`` if it does not answer)."""
        status, body = self.get_json("/assignment/")
        return list(body.get("partitions", [])) if status == 200 else []
