"""Child processes for the demo, the pipeline benchmark and the tests.

:class:`Service` starts ``interest-stream worker`` / ``interest-stream serve``
(or any command) as a child with settings passed through ``INTEREST_*``
environment variables, keeps its output in a log file, and stops it with
SIGTERM (SIGKILL after a grace period). ``kill()`` sends SIGKILL at once, for
crash tests.
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
from interest_stream.core.settings import Settings

__all__ = ["Service", "ServiceError", "http_get_json", "settings_env", "wait_http"]

log = logging.getLogger(__name__)


class ServiceError(InterestStreamError):
    """A child service did not start or died."""


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child process read exactly these settings."""
    from interest_stream.core.settings import settings_environ

    return settings_environ(settings, base)


def http_get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a URL; returns (status, decoded JSON or text). Status 0 = no answer."""
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
    """Poll ``url`` until it answers with one of ``ok``; returns the body."""
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
        """A service running ``interest-stream <verb...>`` with this interpreter."""
        # -P: never let the working directory shadow the packages (e.g. a ./models folder)
        args = [sys.executable, "-m", "interest_stream.cli", *verb]
        return cls(name, args, settings, log_dir, extra_env=extra_env)

    def start(self) -> Service:
        """Start the child (output appended to its log file)."""
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
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
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
