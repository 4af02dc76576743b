"""Install the broker's jars from Maven Central, and find a usable Java (17+).

:func:`install` resolves ``org.apache.kafka:kafka_2.13`` plus a log4j2 backend with
``mvn dependency:copy-dependencies`` into ``<home>/libs`` (once per version).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path

from interest_stream.core import jvm
from interest_stream.streams.kafka_local.config import (
    ENV_HOME,
    BrokerConfig,
    KafkaInstallError,
    KafkaLocalError,
    locked,
    resource_text,
)

__all__ = ["check_java", "install", "is_installed", "parse_java_version"]

logger = logging.getLogger(__name__)

_MARKER = ".installed.json"


def parse_java_version(text: str) -> int:
    """The feature version in ``java -version`` output (``1.8`` -> 8).

    Raises:
        KafkaLocalError: No version string in ``text``.
    """
    return jvm.parse_java_version(text, KafkaLocalError)


def check_java(error: type[KafkaLocalError]) -> str:
    """The java executable, checked to be version 17 or newer (raises ``error`` if not)."""
    return jvm.check_java(error, "Kafka 4")


def is_installed(cfg: BrokerConfig) -> bool:
    """Return whether ``cfg.home`` holds a complete install of ``cfg.version``.

    Args:
        cfg: Broker configuration.

    Returns:
        True when the install marker names ``cfg.version`` and the jars are there.
    """
    try:
        marker = json.loads((cfg.home / _MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("version") == cfg.version
        and (cfg.libs_dir / f"kafka_2.13-{cfg.version}.jar").is_file()
    )


def install(cfg: BrokerConfig | None = None, progress: bool = False) -> Path:
    """Download the broker's jars from Maven Central into ``cfg.home/libs``.

    A no-op when already installed (see :func:`is_installed`). Maven's output is
    kept in ``<home>/install.log``.

    Args:
        cfg: Broker configuration; default ``BrokerConfig()``.
        progress: Run Maven verbosely and log each of its lines at INFO
            (DEBUG otherwise), so a CLI can show the download progress.

    Returns:
        The directory holding the jars.

    Raises:
        KafkaInstallError: Maven or Java is missing, or Maven failed (the message
            quotes the end of its output).
    """
    cfg = cfg or BrokerConfig()
    if is_installed(cfg):
        return cfg.libs_dir
    cfg.home.mkdir(parents=True, exist_ok=True)
    with locked(cfg.home / ".install.lock"):
        if is_installed(cfg):
            return cfg.libs_dir
        check_java(KafkaInstallError)
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaInstallError(
                "Maven (`mvn`) not found on PATH: install Maven 3.6+ to download the "
                f"Kafka {cfg.version} jars, or point {ENV_HOME} at an existing install"
            )
        pom = cfg.home / "pom.xml"
        pom.write_text(resource_text("pom.xml"), encoding="utf-8")
        staging = cfg.home / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            *([] if progress else ["-q"]),
            "-f",
            str(pom),
            f"-Dkafka.version={cfg.version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        logger.info("installing Kafka %s jars into %s (mvn)", cfg.version, cfg.libs_dir)
        started = time.monotonic()
        rc, tail = _run_logged(cmd, cfg.home / "install.log", progress)
        if rc != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaInstallError(
                f"mvn could not download the Kafka {cfg.version} jars (exit {rc}); is Maven "
                f"Central reachable? Full output in {cfg.home / 'install.log'}; last lines:\n"
                + "\n".join(tail)
            )
        jar = staging / f"kafka_2.13-{cfg.version}.jar"
        if not jar.is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaInstallError(f"mvn finished but {jar.name} is missing from {staging}")
        shutil.rmtree(cfg.libs_dir, ignore_errors=True)
        staging.rename(cfg.libs_dir)
        jars = sorted(p.name for p in cfg.libs_dir.glob("*.jar"))
        marker = {"version": cfg.version, "jars": jars, "installed_at": time.time()}
        (cfg.home / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        logger.info(
            "installed %d jars for Kafka %s in %.1fs",
            len(jars),
            cfg.version,
            time.monotonic() - started,
        )
        return cfg.libs_dir


def _run_logged(cmd: list[str], log_path: Path, verbose: bool) -> tuple[int, list[str]]:
    """Run ``cmd``, copy its output to ``log_path`` and the logger; return (rc, tail)."""
    tail: deque[str] = deque(maxlen=30)
    level = logging.INFO if verbose else logging.DEBUG
    with log_path.open("w", encoding="utf-8") as log_fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log_fh.write(line)
            text = line.rstrip("\n")
            # Strip ANSI colours Maven may emit even in batch mode.
            text = re.sub(r"\x1b\[[0-9;]*m", "", text)
            if text:
                tail.append(text)
                logger.log(level, "mvn: %s", text)
        rc = proc.wait()
    return rc, list(tail)
