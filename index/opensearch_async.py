"""Real-time GET by id on the event loop: pooled aiohttp straight to ``GET /<index>/_doc/<id>``.

The API's hot reads (``/interest``, ``/recommendations``) in opensearch mode: no thread
hop and no opensearch-py transport per request. A request that cannot connect, times
out or meets a 502/503/504 is sent again to the next node (as the synchronous client
does); anything else is an answer. Measured against the thread-pool path in
docs/RESULTS.md, "Serving from OpenSearch".
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import quote

import aiohttp

from interest_stream.index.errors import StoreUnavailable
from interest_stream.index.opensearch_mapping import READ_EXCLUDES

__all__ = ["AsyncGetter"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({502, 503, 504})


class AsyncGetter:
    """Pooled real-time GETs of one index, bound to the event loop that first calls it."""

    def __init__(
        self,
        hosts: Sequence[str],
        index: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        pool_size: int = 64,
    ) -> None:
        """GET from ``hosts`` (URLs, tried in turn), at most ``pool_size`` connections each."""
        self.urls = [h.rstrip("/") if "://" in h else f"http://{h.rstrip('/')}" for h in hosts]
        self.index = index
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next = 0

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # a new loop (tests run one app in several): the old session dies with its loop
            conn = aiohttp.TCPConnector(
                limit=self.pool_size * len(self.urls),
                limit_per_host=self.pool_size,
                keepalive_timeout=60.0,
            )
            self._session = aiohttp.ClientSession(
                connector=conn,
                timeout=self.timeout,
                headers={"Accept-Encoding": "identity"},  # the node's gzip costs its CPU
            )
            self._loop = loop
        return self._session

    async def source(self, user_id: str) -> dict[str, Any] | None:
        """The stored ``_source`` of ``user_id`` (``None``: no such document or no index).

        Raises:
            StoreUnavailable: No node answered (after the retries) or one answered an error.
        """
        session = self._client()
        path = f"/{self.index}/_doc/{quote(user_id, safe='')}"
        params = {"_source_excludes": READ_EXCLUDES}
        last = ""
        for attempt in range(self.retries + 1):
            url = self.urls[(self._next + attempt) % len(self.urls)]
            try:
                async with session.get(url + path, params=params) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{url}: {type(exc).__name__}: {exc}"
                continue
            if status in _RETRY_STATUS:
                last = f"{url}: HTTP {status}"
                continue
            self._next = (self._next + attempt + 1) % len(self.urls)
            if status == 404:
                return None
            if status != 200:
                raise StoreUnavailable(f"GET {user_id!r}: HTTP {status}: {body[:300]!r}")
            found: dict[str, Any] = json.loads(body)
            src: dict[str, Any] = found.get("_source", {})
            return src
        raise StoreUnavailable(f"GET {user_id!r} failed on every node: {last}")

    async def aclose(self) -> None:
        """Close the pooled connections (on the loop that opened them)."""
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    def close(self) -> None:
        """Close the pooled connections (from the loop's thread or any other)."""
        session, loop = self._session, self._loop
        self._session = self._loop = None
        if session is None or loop is None or loop.is_closed() or session.closed:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(session.close())
        elif loop.is_running():
            with suppress(Exception):
                asyncio.run_coroutine_threadsafe(session.close(), loop).result(5.0)
