"""A local OpenSearch cluster with the k-NN plugin, run from Maven Central artifacts.

Used by ``interest-stream opensearch start|stop|status`` and the integration tests'
session fixture. Public names: :mod:`interest_stream.index.opensearch_local.cluster`.
"""

from interest_stream.index.opensearch_local.cluster import (
    DEFAULT_KNN_VERSION,
    DEFAULT_OPENSEARCH_VERSION,
    ClusterConfig,
    ClusterStatus,
    NodeStatus,
    OpenSearchInstallError,
    OpenSearchLocalError,
    OpenSearchStartError,
    install,
    is_installed,
    kill_node,
    node_settings,
    painless_descriptor,
    start,
    status,
    stop,
)

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
