"""A local OpenSearch cluster with the k-NN plugin, run from Maven Central artifacts.

Used by ``interest-stream opensearch start|stop|status`` and the integration tests'
session fixture. Public names: :mod:`interest_stream.index.opensearch_local.cluster`.
"""

from interest_stream.index.opensearch_local.cluster import *  # noqa: F403  (the facade's public names, listed once there)
from interest_stream.index.opensearch_local.cluster import __all__ as __all__
