"""What the local JVM services (Kafka, OpenSearch) share: Java 17+, free ports, Maven, children.

Each function takes the caller's error type, so a Kafka start says ``KafkaStartError`` and an
OpenSearch start says ``OpenSearchStartError`` for the same cause.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from interest_stream.core.errors import InterestStreamError

__all__ = [
    "MIN_JAVA_VERSION",
    "Children",
    "check_java",
    "copy_dependencies",
    "find_java",
    "install_once",
    "locked",
    "log_excerpt",
    "parse_java_version",
    "pid_alive",
    "port_in_use",
    "read_marker",
    "run_logged",
    "signal_group",
    "tail",
]

logger = logging.getLogger(__name__)

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


def read_marker(path: Path) -> dict[str, Any]:
    """The JSON object an install left in ``path``; empty when missing or unreadable."""
    try:
        marker = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def install_once(home: Path, installed: Callable[[], bool], build: Callable[[], None]) -> None:
    """Run ``build`` unless ``installed()``, under ``home/.install.lock`` (checked again inside)."""
    if installed():
        return
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".install.lock"):
        if not installed():
            build()


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


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (empty if it is missing)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        return []


def log_excerpt(paths: Sequence[Path], lines: int, missing: str) -> str:
    """The last ``lines`` lines of each of ``paths`` under a header, or ``missing`` if none."""
    parts: list[str] = []
    for path in paths:
        last = tail(path, lines)
        if last:
            parts += [f"--- last {len(last)} lines of {path} ---", *last]
    return "\n".join(parts) if parts else missing


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (to ``pid`` alone if not allowed)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Children:
    """The JVM processes this interpreter started, by pid: reaped (no zombies), waited on.

    Args:
        what: Names the process in messages (``"Kafka broker"``).
        error: Raised when a process survives SIGKILL.
    """

    def __init__(self, what: str, error: type[InterestStreamError]) -> None:
        self.what = what
        self.error = error
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def launch(
        self,
        cmd: Sequence[str],
        out_file: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Start ``cmd`` detached (own session), output appended to ``out_file``; its pid."""
        out_fh: IO[bytes]
        with out_file.open("ab") as out_fh:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out_fh,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=None if env is None else dict(env),
                start_new_session=True,
                close_fds=True,
            )
        self.procs[proc.pid] = proc
        return proc.pid

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` runs (see :func:`pid_alive`)."""
        return pid_alive(pid, self.procs)

    def exit_note(self, pid: int) -> str:
        """`` with exit code N`` for our exited child ``pid`` (forgotten after), else ``""``."""
        child = self.procs.pop(pid, None)
        if child is None or child.poll() is None:
            return ""
        return f" with exit code {child.returncode}"

    def wait_dead(self, pid: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``pid`` to exit; whether it did."""
        child = self.procs.get(pid)
        if child is not None:
            try:
                child.wait(timeout=max(timeout, 0.0))
            except subprocess.TimeoutExpired:
                return False
            self.procs.pop(pid, None)
            return True
        deadline = time.monotonic() + timeout
        while self.alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def terminate(self, pid: int, timeout: float) -> None:
        """SIGTERM ``pid``'s process group; SIGKILL it after ``timeout`` seconds.

        Raises:
            InterestStreamError: (``self.error``) The process survived SIGKILL.
        """
        signal_group(pid, signal.SIGTERM)
        if self.wait_dead(pid, timeout):
            return
        logger.warning(
            "%s pid %d still runs %.0fs after SIGTERM; killing it", self.what, pid, timeout
        )
        signal_group(pid, signal.SIGKILL)
        if not self.wait_dead(pid, 10.0):
            raise self.error(f"{self.what} pid {pid} survived SIGKILL")


def run_logged(
    cmd: Sequence[str], log_path: Path, verbose: bool, tag: str
) -> tuple[int, list[str]]:
    """Run ``cmd``, copy its output to ``log_path`` and the logger; return (rc, last 30 lines).

    Lines are logged at INFO when ``verbose`` (DEBUG otherwise), prefixed with ``tag``.
    """
    last: deque[str] = deque(maxlen=30)
    level = logging.INFO if verbose else logging.DEBUG
    with log_path.open("w", encoding="utf-8") as log_fh:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log_fh.write(line)
            # Strip ANSI colours Maven may emit even in batch mode.
            text = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip("\n"))
            if text:
                last.append(text)
                logger.log(level, "%s: %s", tag, text)
        rc = proc.wait()
    return rc, list(last)


def copy_dependencies(
    pom: Path,
    properties: Mapping[str, str],
    out: Path,
    *,
    what: str,
    env_home: str,
    error: type[InterestStreamError],
    progress: bool = False,
) -> None:
    """``mvn dependency:copy-dependencies`` of ``pom`` into ``out`` (log: ``install.log`` by it).

    Args:
        pom: The POM whose runtime dependencies to copy.
        properties: ``-D`` properties of the POM (versions).
        out: The folder the jars and zips go to.
        what: Names the download in messages (``"the Kafka 4.0.0 jars"``).
        env_home: The setting that points at an existing install (named when Maven is missing).
        error: Raised when Maven is missing or fails (the message quotes its last lines).
        progress: Log Maven's lines at INFO (DEBUG otherwise) and run it verbosely.
    """
    mvn = shutil.which("mvn")
    if not mvn:
        raise error(
            f"Maven (`mvn`) not found on PATH: install Maven 3.6+ to download {what}, "
            f"or point {env_home} at an existing install"
        )
    log_path = pom.parent / "install.log"
    cmd = [
        mvn,
        "-B",
        *([] if progress else ["-q"]),
        "-f",
        str(pom),
        *(f"-D{key}={value}" for key, value in properties.items()),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={out}",
        "-DincludeScope=runtime",
    ]
    rc, last = run_logged(cmd, log_path, progress, "mvn")
    if rc != 0:
        raise error(
            f"mvn could not download {what} (exit {rc}); is Maven Central reachable? "
            f"Full output in {log_path}; last lines:\n" + "\n".join(last)
        )
