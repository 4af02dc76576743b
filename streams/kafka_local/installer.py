"""Install the broker's jars from Maven Central, and find a usable Java (17+).

:func:`install` resolves ``org.apache.kafka:kafka_2.13`` plus a log4j2 backend with
``mvn dependency:copy-dependencies`` into ``<home>/libs`` (once per version).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from interest_stream.core import jvm
from interest_stream.streams.kafka_local.config import (
    ENV_HOME,
    BrokerConfig,
    KafkaInstallError,
    KafkaLocalError,
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
    marker = jvm.read_marker(cfg.home / _MARKER)
    return (
        marker.get("version") == cfg.version
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
    jvm.install_once(cfg.home, lambda: is_installed(cfg), lambda: _install(cfg, progress))
    return cfg.libs_dir


def _install(cfg: BrokerConfig, progress: bool) -> None:
    check_java(KafkaInstallError)
    pom = cfg.home / "pom.xml"
    pom.write_text(resource_text("pom.xml"), encoding="utf-8")
    staging = cfg.home / f"libs.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("installing Kafka %s jars into %s (mvn)", cfg.version, cfg.libs_dir)
    started = time.monotonic()
    try:
        jvm.copy_dependencies(
            pom,
            {"kafka.version": cfg.version},
            staging,
            what=f"the Kafka {cfg.version} jars",
            env_home=ENV_HOME,
            error=KafkaInstallError,
            progress=progress,
        )
    except KafkaInstallError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
