"""Real-time reads by id on the event loop: concurrent GETs coalesced into ``_mget`` requests.

The API's hot reads (``/interest``, ``/recommendations``) in opensearch mode: no thread
hop and no opensearch-py transport per request. Reads that arrive while the loop is
busy are sent together: every read asked within one loop tick joins one
``POST /<index>/_mget`` (at most ``max_batch`` ids), and while ``max_inflight`` of them
are in flight the next reads wait for one to come back (so the batches grow with the
load and a lone read is sent at once). The ``_source`` is read whole: the node's
source filtering costs it more CPU than the whole document's bytes cost the API
(docs/RESULTS.md, "Serving from OpenSearch", third pass). A request that cannot connect,
times out or meets a 502/503/504 is sent again to the next node (as the synchronous
client does); anything else is an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import aiohttp
import orjson

from interest_stream.index.errors import StoreUnavailable

__all__ = ["AsyncGetter"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({502, 503, 504})
_Waiters = dict[str, list["asyncio.Future[dict[str, Any] | None]"]]


class AsyncGetter:
    """Pooled, batched real-time reads of one index, bound to the event loop that first calls it."""

    def __init__(
        self,
        hosts: Sequence[str],
        index: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        pool_size: int = 64,
        max_batch: int = 64,
        max_inflight: int = 4,
    ) -> None:
        """Read from ``hosts`` (URLs, tried in turn), at most ``pool_size`` connections each.

        ``max_batch``: ids per ``_mget``; ``max_inflight``: ``_mget`` requests at once.
        """
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be >= 1")
        self.urls = [h.rstrip("/") if "://" in h else f"http://{h.rstrip('/')}" for h in hosts]
        self.index = index
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.pool_size = pool_size
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        #: Reads answered and ``_mget`` requests sent (the mean batch is their ratio).
        self.reads = 0
        self.requests = 0
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next = 0
        self._pending: _Waiters = {}
        self._scheduled = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

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
            self._pending, self._scheduled, self._inflight = {}, False, 0
        return self._session

    async def source(self, user_id: str) -> dict[str, Any] | None:
        """The stored ``_source`` of ``user_id`` (``None``: no such document or no index).

        Raises:
            StoreUnavailable: No node answered (after the retries) or one answered an error.
        """
        self._client()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._pending.setdefault(user_id, []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await fut

    def _dispatch(self) -> None:
        """Send what is pending, in batches, while fewer than ``max_inflight`` are out."""
        self._scheduled = False
        while self._pending and self._inflight < self.max_inflight:
            ids = list(self._pending)[: self.max_batch]
            batch = {uid: self._pending.pop(uid) for uid in ids}
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: _Waiters) -> None:
        try:
            found = await self._mget(list(batch))
        except Exception as exc:  # every waiter of the batch gets the failure
            for futs in batch.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(exc)
        else:
            for uid, futs in batch.items():
                res = found.get(uid)
                for fut in futs:
                    if fut.done():
                        continue
                    if isinstance(res, StoreUnavailable):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        finally:
            self._inflight -= 1
            self.reads += sum(len(f) for f in batch.values())
            self.requests += 1
            if self._pending:
                self._dispatch()

    async def _mget(self, ids: list[str]) -> dict[str, Any]:
        """``{id: source | None | StoreUnavailable}`` of one ``_mget`` (with failover)."""
        session = self._client()
        body = orjson.dumps({"ids": ids})
        headers = {"Content-Type": "application/json"}
        last = ""
        for attempt in range(self.retries + 1):
            url = self.urls[(self._next + attempt) % len(self.urls)]
            try:
                async with session.post(
                    f"{url}/{self.index}/_mget", data=body, headers=headers
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{url}: {type(exc).__name__}: {exc}"
                continue
            if status in _RETRY_STATUS:
                last = f"{url}: HTTP {status}"
                continue
            self._next = (self._next + attempt + 1) % len(self.urls)
            if status == 404:  # no index: nobody is held
                return dict.fromkeys(ids)
            if status != 200:
                raise StoreUnavailable(f"_mget of {len(ids)} users: HTTP {status}: {raw[:300]!r}")
            # orjson: the whole _source of every user of the batch (two or three 192-d
            # vectors each) parsed at ~1/5 of json.loads' CPU, to the same floats
            return {doc["_id"]: _doc_source(doc) for doc in orjson.loads(raw)["docs"]}
        raise StoreUnavailable(f"_mget of {len(ids)} users failed on every node: {last}")

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


def _doc_source(doc: dict[str, Any]) -> dict[str, Any] | StoreUnavailable | None:
    """One ``_mget`` answer: the source, ``None`` (not found, no index) or the doc's error."""
    err = doc.get("error")
    if err is not None:
        kind = err.get("type", "") if isinstance(err, dict) else str(err)
        if kind == "index_not_found_exception":
            return None
        return StoreUnavailable(f"GET {doc.get('_id')!r}: {str(err)[:300]}")
    if not doc.get("found"):
        return None
    src: dict[str, Any] = doc.get("_source", {})
    return src
