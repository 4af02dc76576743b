"""A local OpenSearch cluster (1..N nodes, k-NN) run from Maven Central artifacts: the facade.

:func:`install` assembles the distribution under ``<home>/dist``; :func:`start` runs
each node's ``bin/opensearch`` detached (as an unprivileged user when root), keeping
config, data and logs under ``<data_dir>/node-<i>`` (layout: docs/DESIGN.md, "Local
OpenSearch"); :func:`stop` and :func:`status` find the nodes again from the state file.
The work is done in :mod:`.config`, :mod:`.installer`, :mod:`.runas`, :mod:`.nodeconf`,
:mod:`.process` and :mod:`.probe`; this module re-exports their public names.
"""

from __future__ import annotations

from interest_stream.index.opensearch_local.config import (
    DEFAULT_KNN_VERSION,
    DEFAULT_OPENSEARCH_VERSION,
    ClusterConfig,
    ClusterStatus,
    NodeStatus,
    OpenSearchInstallError,
    OpenSearchLocalError,
    OpenSearchStartError,
)
from interest_stream.index.opensearch_local.installer import (
    install,
    is_installed,
    painless_descriptor,
)
from interest_stream.index.opensearch_local.nodeconf import node_settings
from interest_stream.index.opensearch_local.process import kill_node, start, status, stop

__all__ = [
    "DEFAULT_KNN_VERSION",
    "DEFAULT_OPENSEARCH_VERSION",
    "ClusterConfig",
    "ClusterStatus",
    "NodeStatus",
    "OpenSearchInstallError",
    "OpenSearchLocalError",
    "OpenSearchStartError",
    "install",
    "is_installed",
    "kill_node",
    "node_settings",
    "painless_descriptor",
    "start",
    "status",
    "stop",
]
