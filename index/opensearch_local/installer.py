"""Install OpenSearch from Maven Central and find a usable Java.

:func:`install` resolves the integ-test distribution zip, the k-NN plugin zip and the
``lang-painless`` module's jars with ``mvn dependency:copy-dependencies``, then
assembles ``<home>/dist``: the distribution, ``plugins/opensearch-knn`` and
``modules/lang-painless`` (jars + a generated plugin descriptor and security policy).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

from interest_stream.core import jvm
from interest_stream.index.opensearch_local.config import (
    ENV_HOME,
    ClusterConfig,
    OpenSearchInstallError,
    OpenSearchLocalError,
    resource_text,
)

__all__ = ["check_java", "install", "is_installed", "painless_descriptor", "parse_java_version"]

logger = logging.getLogger(__name__)

_MARKER = ".installed.json"
_PAINLESS_CLASS = "org.opensearch.painless.PainlessPlugin"
# What the lang-painless module folder holds besides its descriptor (the k-NN plugin
# names it in `extended.plugins`, so its classes are the k-NN plugin's parent loader).
_PAINLESS_JARS = ("lang-painless-", "opensearch-scripting-painless-spi-", "antlr4-runtime-", "asm-")
_PAINLESS_POLICY = """grant {
  // generates the classes of compiled scripts
  permission java.lang.RuntimePermission "createClassLoader";
  // finds the class loader to load allow-listed classes from
  permission java.lang.RuntimePermission "getClassLoader";
};
"""


def parse_java_version(text: str) -> int:
    """The feature version in ``java -version`` output (``1.8`` -> 8).

    Raises:
        OpenSearchLocalError: No version string in ``text``.
    """
    return jvm.parse_java_version(text, OpenSearchLocalError)


def check_java(error: type[OpenSearchLocalError]) -> Path:
    """``JAVA_HOME`` of a Java 17+ (resolved), or raise ``error`` saying what is wrong."""
    return Path(jvm.check_java(error, "OpenSearch")).resolve().parent.parent


def is_installed(cfg: ClusterConfig) -> bool:
    """Whether ``cfg.home`` holds a complete install of ``cfg.version`` / ``cfg.knn_version``."""
    marker = jvm.read_marker(cfg.home / _MARKER)
    return (
        marker.get("version") == cfg.version
        and marker.get("knn_version") == cfg.knn_version
        and (cfg.dist_dir / "bin" / "opensearch").is_file()
    )


def painless_descriptor(version: str) -> str:
    """``plugin-descriptor.properties`` of the ``lang-painless`` module for ``version``."""
    return (
        "description=An easy, safe and fast scripting language for OpenSearch\n"
        f"version={version}\n"
        "name=lang-painless\n"
        f"classname={_PAINLESS_CLASS}\n"
        "java.version=11\n"
        f"opensearch.version={version}\n"
        "extended.plugins=\n"
        "custom.foldername=\n"
        "has.native.controller=false\n"
    )


def install(cfg: ClusterConfig | None = None, progress: bool = False) -> Path:
    """Download and assemble OpenSearch with k-NN into ``cfg.home/dist`` (no-op when done).

    Args:
        cfg: Cluster configuration; default ``ClusterConfig()``.
        progress: Log Maven's lines at INFO (DEBUG otherwise).

    Returns:
        The distribution directory (``OPENSEARCH_HOME``).

    Raises:
        OpenSearchInstallError: Maven or Java is missing, Maven failed, or an
            artifact does not look as expected.
    """
    cfg = cfg or ClusterConfig()
    jvm.install_once(cfg.home, lambda: is_installed(cfg), lambda: _install(cfg, progress))
    return cfg.dist_dir


def _install(cfg: ClusterConfig, progress: bool) -> None:
    check_java(OpenSearchInstallError)
    staging = cfg.home / f"staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    try:
        artifacts = _download(cfg, staging / "artifacts", progress)
        dist = _assemble(cfg, artifacts, staging / "dist")
        shutil.rmtree(cfg.dist_dir, ignore_errors=True)
        dist.rename(cfg.dist_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _world_readable(cfg.home)
    marker = {
        "version": cfg.version,
        "knn_version": cfg.knn_version,
        "installed_at": time.time(),
    }
    (cfg.home / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    logger.info(
        "installed OpenSearch %s + k-NN %s in %s (%.1fs)",
        cfg.version,
        cfg.knn_version,
        cfg.dist_dir,
        time.monotonic() - started,
    )


def _download(cfg: ClusterConfig, out: Path, progress: bool) -> Path:
    pom = cfg.home / "pom.xml"
    pom.write_text(resource_text("pom.xml"), encoding="utf-8")
    logger.info("downloading OpenSearch %s and k-NN %s (mvn)", cfg.version, cfg.knn_version)
    jvm.copy_dependencies(
        pom,
        {"opensearch.version": cfg.version, "knn.version": cfg.knn_version},
        out,
        what=f"OpenSearch {cfg.version} and k-NN {cfg.knn_version}",
        env_home=ENV_HOME,
        error=OpenSearchInstallError,
        progress=progress,
    )
    return out


def _need(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise OpenSearchInstallError(f"mvn finished but {name} is missing from {folder}")
    return path


def _assemble(cfg: ClusterConfig, artifacts: Path, dist: Path) -> Path:
    """Unpack the distribution, add the k-NN plugin and the lang-painless module."""
    _unzip(_need(artifacts, f"opensearch-{cfg.version}.zip"), dist)
    if not (dist / "bin" / "opensearch").is_file():
        raise OpenSearchInstallError(f"the OpenSearch {cfg.version} zip holds no bin/opensearch")
    _unzip(
        _need(artifacts, f"opensearch-knn-{cfg.knn_version}.zip"),
        dist / "plugins" / "opensearch-knn",
    )
    module = dist / "modules" / "lang-painless"
    if module.exists():  # a distribution that has it already
        return dist
    module.mkdir(parents=True)
    jars = [p for p in sorted(artifacts.glob("*.jar")) if p.name.startswith(_PAINLESS_JARS)]
    main_jar = _need(artifacts, f"lang-painless-{cfg.version}.jar")
    with zipfile.ZipFile(main_jar) as zf:
        if _PAINLESS_CLASS.replace(".", "/") + ".class" not in zf.namelist():
            raise OpenSearchInstallError(f"{main_jar.name} has no {_PAINLESS_CLASS}")
    for jar in jars:
        shutil.copy2(jar, module / jar.name)
    (module / "plugin-descriptor.properties").write_text(painless_descriptor(cfg.version))
    (module / "plugin-security.policy").write_text(_PAINLESS_POLICY)
    return dist


def _unzip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest`` keeping file modes; strip one common top folder."""
    tmp = dest.with_name(dest.name + ".unzip")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = tmp / info.filename
            if not target.resolve().is_relative_to(tmp.resolve()):
                raise OpenSearchInstallError(f"{archive.name}: unsafe path {info.filename!r}")
            zf.extract(info, tmp)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                target.chmod(mode)
    entries = list(tmp.iterdir())
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    dest.parent.mkdir(parents=True, exist_ok=True)
    root.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _world_readable(top: Path) -> None:
    """Let the unprivileged node user read the install (dirs 755, files keep their x bit)."""
    for dirpath, _dirnames, filenames in os.walk(top):
        Path(dirpath).chmod(0o755)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)
