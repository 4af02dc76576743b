"""The API with ``INTEREST_USER_STORE=opensearch``: users read from the cluster, none in memory.

Reads by id run on the event loop (pooled aiohttp, :class:`AsyncGetter`); every other
call to the cluster runs off it (``ApiState.users_call``, the thread pool); both are
bounded by :data:`READ_TIMEOUT_S` and :data:`READ_RETRIES`.

:func:`opensearch_users` builds the user store the routes call
(:class:`~interest_stream.index.opensearch_users.OpenSearchUsers`: real-time GET by id,
k-NN audience); :class:`ClusterWatch` stands where the output-topic consumer stands in
``faiss`` mode (same ``ready``/``status``/``describe`` surface), so ``/readyz`` reflects
the cluster: ready while its health is yellow or green and the user index exists.
The sink (``interest-stream opensearch sink``) fills the index.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, cast

from interest_stream.api.consumer import ApplyStats
from interest_stream.core.settings import Settings
from interest_stream.index.item_index import ItemIndex
from interest_stream.index.opensearch_async import AsyncGetter
from interest_stream.index.opensearch_store import OpenSearchStore, StoreUnavailable
from interest_stream.index.opensearch_users import OpenSearchUsers

if TYPE_CHECKING:
    from interest_stream.api.consumer import OutputConsumer
    from interest_stream.index.user_index import UserIndex

__all__ = [
    "ASYNC_POOL",
    "READ_POOL",
    "READ_RETRIES",
    "READ_TIMEOUT_S",
    "ClusterWatch",
    "opensearch_parts",
    "opensearch_users",
]

logger = logging.getLogger(__name__)

#: Bound of one request of the API to the cluster (a GET by id, a k-NN audience) ...
READ_TIMEOUT_S = 5.0
#: ... and how often a request that could not connect or timed out is sent again, to
#: the next of INTEREST_OPENSEARCH_URL's nodes (a killed node refuses at once).
READ_RETRIES = 2
#: Connections kept open per node: one per thread of the API's pool (anyio's default 40),
#: else every concurrent call beyond the pool opens and drops a TCP connection.
READ_POOL = 40
#: Connections per node of the event loop's GETs by id (``/interest``, ``/recommendations``).
ASYNC_POOL = 64


def opensearch_users(settings: Settings, items: ItemIndex | None) -> OpenSearchUsers:
    """The user store of ``settings`` (the model's blend weight when a checkpoint is loaded)."""
    store = OpenSearchStore(
        settings.opensearch_url,
        settings.opensearch_index,
        blend_weight=items.blend_alpha if items is not None else 0.5,
        timeout_s=READ_TIMEOUT_S,
        max_retries=READ_RETRIES,
        pool_size=READ_POOL,
    )
    if settings.opensearch_ef_search is not None:
        store.ef_search = settings.opensearch_ef_search
    getter = AsyncGetter(
        store.hosts,
        store.index,
        timeout_s=READ_TIMEOUT_S,
        retries=READ_RETRIES,
        pool_size=ASYNC_POOL,
    )
    users = OpenSearchUsers(store, getter=getter)
    users.model_version = None if items is None else items.model_version
    return users


class ClusterWatch:
    """Polls the cluster's health; the consumer's surface for readiness and the dashboard."""

    def __init__(self, settings: Settings, users: OpenSearchUsers, every_s: float = 1.0) -> None:
        """Watch ``users``' cluster every ``every_s`` seconds once started."""
        self.topic = settings.output_topic
        self.users = users
        self.every_s = every_s
        self.status = "starting"
        self.health: str | None = None
        self.lag: int | None = None
        self.error: str | None = None
        self.totals = ApplyStats()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """Whether the cluster answered yellow or green and the user index exists."""
        return self._ready.is_set()

    @property
    def alive(self) -> bool:
        """Whether the watch thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready (or ``timeout``)."""
        return self._ready.wait(timeout)

    def check(self) -> bool:
        """Probe the cluster once; update ``status``, ``health`` and readiness."""
        self.health = self.users.store.health()
        try:
            has_index = self.users.dim is not None
        except StoreUnavailable as exc:
            self.error, has_index = str(exc), False
        ok = self.health in ("yellow", "green") and has_index
        if ok:
            try:  # the count /v1/stats and /metrics read, asked here, off the event loop
                self.users.refresh_count()
            except StoreUnavailable as exc:
                logger.debug("user count: %s", exc)
            self.status, self.error = "ready", None
            self._ready.set()
        else:
            self.status = "error" if self.health in (None, "red") else "waiting_for_index"
            self.error = self.error or f"OpenSearch health {self.health or 'unreachable'}"
            self._ready.clear()
        return ok

    def start(self) -> None:
        """Start polling in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="opensearch-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception as exc:  # never let the thread die
                self.status, self.error = "error", f"{type(exc).__name__}: {exc}"
                self._ready.clear()
            self._stop.wait(self.every_s)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and close the store's connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.users.close()

    def describe(self) -> dict[str, Any]:
        """Status, health and the reads by id so far (``reads`` / ``read_requests``: the mean
        ``_mget`` batch) as JSON."""
        return {
            "status": self.status,
            "ready": self.ready,
            "lag": None,
            "error": self.error,
            "store": "opensearch",
            "health": self.health,
            "index": self.users.store.index,
            # reads by id answered on the event loop and the _mget requests they took
            "reads": getter.reads if (getter := self.users.getter) is not None else None,
            "read_requests": getter.requests if getter is not None else None,
        }


def opensearch_parts(
    settings: Settings, items: ItemIndex | None
) -> tuple[UserIndex, OutputConsumer]:
    """The user store and its watch, typed as what they stand in for in ``faiss`` mode.

    They answer the same calls (structural stand-ins; the API's state names the
    ``faiss`` classes).
    """
    users = opensearch_users(settings, items)
    return cast("UserIndex", users), cast("OutputConsumer", ClusterWatch(settings, users))
