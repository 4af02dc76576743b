"""Probes of the local cluster: is a port taken, what does ``_cluster/health`` say."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from interest_stream.core import jvm
from interest_stream.index.opensearch_local.config import OpenSearchStartError

__all__ = ["cluster_health", "port_in_use"]

logger = logging.getLogger(__name__)


def port_in_use(host: str, port: int) -> bool:
    """Return whether something listens on ``host:port`` (bind test, as the JVM does)."""
    return jvm.port_in_use(host, port, OpenSearchStartError)


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
