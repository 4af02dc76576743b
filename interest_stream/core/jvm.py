"""What the local JVM services (Kafka, OpenSearch) need from the machine: Java 17+, free ports.

Each function takes the caller's error type, so a Kafka start says ``KafkaStartError`` and an
OpenSearch start says ``OpenSearchStartError`` for the same cause.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from interest_stream.core.errors import InterestStreamError

__all__ = [
    "MIN_JAVA_VERSION",
    "check_java",
    "find_java",
    "locked",
    "parse_java_version",
    "pid_alive",
    "port_in_use",
]

#: The oldest Java both Kafka 4 and OpenSearch 2 run on.
MIN_JAVA_VERSION = 17


def find_java(error: type[InterestStreamError]) -> str:
    """The ``java`` executable: ``$JAVA_HOME/bin/java``, else the first on ``PATH``.

    Raises:
        error: Neither exists.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if not found:
        raise error(
            f"Java not found: set JAVA_HOME or put `java` (version {MIN_JAVA_VERSION}+) on PATH"
        )
    return found


def parse_java_version(text: str, error: type[InterestStreamError] = InterestStreamError) -> int:
    """The feature version in ``java -version`` output (``1.8`` -> 8, ``17.0.2`` -> 17).

    Raises:
        error: No version string in ``text``.
    """
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise error(f"cannot read the Java version from: {text.strip()[:200]!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def check_java(error: type[InterestStreamError], who: str = "this service") -> str:
    """The ``java`` executable, checked to run and to be version 17 or newer.

    Args:
        error: The exception type to raise.
        who: Named in the message (``"Kafka 4"``).

    Raises:
        error: Java is missing, does not run, or is too old.
    """
    try:
        java = find_java(error)
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
        version = parse_java_version(proc.stderr + proc.stdout, error)
    except (InterestStreamError, OSError, subprocess.SubprocessError) as exc:
        raise error(f"cannot run Java: {exc}") from exc
    if version < MIN_JAVA_VERSION:
        raise error(
            f"{java} is Java {version}; {who} needs Java {MIN_JAVA_VERSION}+ "
            "(set JAVA_HOME to a newer JDK)"
        )
    return java


def port_in_use(host: str, port: int, error: type[InterestStreamError]) -> bool:
    """Whether something listens on ``host:port`` (a bind test, as the JVM does).

    Raises:
        error: The address cannot be bound for another reason (e.g. not this machine's).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise error(f"cannot listen on {host}:{port}: {exc}") from exc
    return False


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def pid_alive(pid: int, children: dict[int, subprocess.Popen[Any]]) -> bool:
    """Whether ``pid`` runs: a zombie counts as gone; our own exited child is reaped and dropped.

    Args:
        pid: The process id.
        children: The caller's table of ``Popen`` objects it started, by pid.
    """
    child = children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
