"""The unprivileged user the nodes run as: OpenSearch refuses to run as root.

As root, :func:`resolve_user` creates the system user (``useradd --system``) when it
is missing; :func:`command_prefix` wraps the node's command in ``setpriv`` so it runs
with that user's ids; :func:`check_reachable` says which folder the user cannot enter.
Not root: the nodes run as the current user and nothing here changes ids.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from interest_stream.index.opensearch_local.config import OpenSearchStartError

__all__ = ["RunAs", "check_reachable", "chown_tree", "command_prefix", "resolve_user"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunAs:
    """Who the nodes run as (``None`` name: the current user, no id change)."""

    name: str | None
    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve_user(name: str | None) -> RunAs:
    """The user the nodes run as; as root, create ``name`` if missing.

    Raises:
        OpenSearchStartError: Running as root without a user name, the user cannot
            be created, or a non-root process asks for another user.
    """
    if name is None:
        if os.geteuid() == 0:
            raise OpenSearchStartError("OpenSearch refuses to run as root: set run_as to a user")
        return RunAs(None, os.getuid(), os.getgid(), tuple(os.getgroups()))
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = _create_user(name)
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise OpenSearchStartError(
            f"only root can start OpenSearch as user {name!r}; run as that user or leave "
            "run_as unset"
        )
    if entry.pw_uid == 0:
        raise OpenSearchStartError(f"user {name!r} is root; OpenSearch refuses to run as root")
    groups = tuple(os.getgrouplist(name, entry.pw_gid))
    return RunAs(name, entry.pw_uid, entry.pw_gid, groups)


def _create_user(name: str) -> pwd.struct_passwd:
    if os.geteuid() != 0:
        raise OpenSearchStartError(f"user {name!r} does not exist (only root can create it)")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    logger.info("creating the system user %s for OpenSearch", name)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise OpenSearchStartError(f"cannot create user {name!r}: {exc}") from exc
    if proc.returncode not in (0, 9):  # 9: created meanwhile by another process
        raise OpenSearchStartError(f"useradd {name} failed: {proc.stderr.strip()[:300]}")
    return pwd.getpwnam(name)


def command_prefix(user: RunAs) -> list[str]:
    """``setpriv`` (or ``runuser``) arguments that run a command as ``user`` ([] if no change)."""
    if user.name is None or user.uid == os.geteuid():
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user.name, "--"]
    raise OpenSearchStartError("neither setpriv nor runuser found (util-linux) to drop root")


def chown_tree(top: Path, user: RunAs) -> None:
    """Give ``top`` and everything below it to ``user`` (no-op for the current user)."""
    if user.name is None or os.geteuid() != 0:
        return
    for dirpath, _dirnames, filenames in os.walk(top):
        os.chown(dirpath, user.uid, user.gid)
        for name in filenames:
            os.chown(Path(dirpath) / name, user.uid, user.gid, follow_symlinks=False)


def check_reachable(path: Path, user: RunAs) -> None:
    """Raise when ``user`` cannot enter every folder from ``/`` down to ``path``.

    Raises:
        OpenSearchStartError: Naming the first folder the user cannot enter.
    """
    if user.name is None:
        return
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            return
        if st.st_uid == user.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in user.groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise OpenSearchStartError(
                f"the OpenSearch user {user.name!r} cannot enter {folder} (mode "
                f"{stat.filemode(st.st_mode)}): put the install and data folders elsewhere "
                "(INTEREST_OPENSEARCH_HOME, --data-dir) or open that folder"
            )
