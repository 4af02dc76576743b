"""Probes of the local cluster: is a port taken, what does ``_cluster/health`` say."""

from __future__ import annotations

import errno
import json
import logging
import socket
import urllib.error
import urllib.request
from typing import Any

from interest_stream.index.opensearch_local.config import OpenSearchStartError

__all__ = ["cluster_health", "port_in_use"]

logger = logging.getLogger(__name__)


def port_in_use(host: str, port: int) -> bool:
    """Return whether something listens on ``host:port`` (bind test, as the JVM does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise OpenSearchStartError(f"cannot listen on {host}:{port}: {exc}") from exc
    return False


def cluster_health(url: str, timeout: float) -> dict[str, Any] | None:
    """``GET <url>/_cluster/health`` as a dict, or ``None`` when nothing answers it."""
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health", timeout=timeout) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError) as exc:
        logger.debug("health probe of %s failed: %r", url, exc)
        return None
    if not isinstance(body, dict) or "status" not in body:
        return None
    return body
