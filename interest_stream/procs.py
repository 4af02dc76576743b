"""Child processes for the demo, the pipeline benchmark and the tests.

:class:`Service` runs ``interest-stream <verb>`` (or any command) as a child in
its own process group, with the given settings passed as ``INTEREST_*``
environment variables and its output appended to ``<log_dir>/<name>.log``;
``stop()`` sends SIGTERM (SIGKILL after a grace period), ``kill()`` SIGKILL at
once (crash tests). :func:`http_get_json` and :func:`wait_http` probe the
children's HTTP endpoints.
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
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings, settings_environ

__all__ = ["Service", "ServiceError", "http_get_json", "settings_env", "wait_http"]

log = logging.getLogger(__name__)


class ServiceError(InterestStreamError):
    """A child service did not start or died."""


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child process read exactly these settings.

    Args:
        settings: The settings the child should see.
        base: The environment to start from (default: this process's).

    Returns:
        ``base`` with every setting as its ``INTEREST_*`` variable.
    """
    return settings_environ(settings, base)


def http_get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a URL.

    Args:
        url: The URL (loopback services).
        timeout: Seconds to wait for the answer.

    Returns:
        ``(status, body)``: the body decoded as JSON, else as text; ``(0, None)``
        when nothing answered. HTTP errors are returned, not raised.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            body = resp.read()
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        status = exc.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", errors="replace")


def wait_http(url: str, timeout: float = 60.0, ok: tuple[int, ...] = (200,)) -> Any:
    """Poll ``url`` every 0.2 s until it answers with one of ``ok``.

    Args:
        url: The URL to poll.
        timeout: Seconds to keep trying.
        ok: Statuses that count as an answer.

    Returns:
        The body of the first good answer (JSON decoded, else text).

    Raises:
        ServiceError: No good answer within ``timeout`` (the last status and body).
    """
    deadline = time.monotonic() + timeout
    status, body = 0, None
    while time.monotonic() < deadline:
        status, body = http_get_json(url)
        if status in ok:
            return body
        time.sleep(0.2)
    raise ServiceError(f"{url} did not answer {ok} within {timeout:.0f}s (last: {status} {body})")


class Service:
    """One child process of the product (worker, API, ...)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        settings: Settings,
        log_dir: Path,
        *,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.settings = settings
        self.log_path = Path(log_dir) / f"{name}.log"
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def cli(
        cls,
        name: str,
        verb: list[str],
        settings: Settings,
        log_dir: Path,
        *,
        extra_env: Mapping[str, str] | None = None,
    ) -> Service:
        """A service running ``interest-stream <verb...>`` with this interpreter.

        Args:
            name: The service's name (also its log file's).
            verb: The CLI verb and its arguments, e.g. ``["worker"]``.
            settings: Passed to the child as ``INTEREST_*`` variables.
            log_dir: Where ``<name>.log`` is written.
            extra_env: Further environment variables (win over the settings).

        Returns:
            The service, not started yet.
        """
        args = [sys.executable, "-m", "interest_stream.cli", *verb]
        return cls(name, args, settings, log_dir, extra_env=extra_env)

    def start(self) -> Service:
        """Start the child (output appended to its log file); returns ``self``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = settings_env(self.settings)
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        log.info("started %s (pid %d), log %s", self.name, self.proc.pid, self.log_path)
        return self

    @property
    def pid(self) -> int | None:
        """The child's pid, if started."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        """Raise :class:`ServiceError` with the log tail if the child died."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceError(
                f"{self.name} exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the child's process group, then SIGKILL after ``timeout`` seconds.

        Returns:
            The child's exit code (``None`` if it was never started).
        """
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL the child's whole process group at once (crash simulation)."""
        if self.proc is None:
            return None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.proc.wait(timeout=30)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
