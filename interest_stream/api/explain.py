"""``explain=true``: the API asks the worker that holds the user's window why.

The API holds vectors and the latest 20 events of each user, not the windows (up to 200
events) nor the encoder, so the worker computes the explanation (occlusion,
``POST /explain/`` of :mod:`interest_stream.streams.views`). :class:`WorkerDirectory`
finds that worker: the user's partition is the producers' (Kafka's murmur2 partitioner
on the user id), the partition's worker comes from each worker's ``/assignment/``
(``INTEREST_WORKER_URLS``), cached and refreshed on a miss; a miss after a refresh asks
every worker. :class:`ExplainAdmission` bounds the ``explain=true`` requests in flight
(one more is answered 503 at once, before any work). Design: docs/DESIGN.md
("Explanations").
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import numpy as np
from kafka.partitioner.default import murmur2
from starlette.types import ASGIApp, Receive, Scope, Send

from interest_stream.api.errors import ApiError, error_body
from interest_stream.core.settings import Settings

__all__ = ["ExplainAdmission", "WorkerDirectory", "partition_of", "worker_urls"]

log = logging.getLogger(__name__)

#: Seconds an assignment map is trusted before it is read again.
ASSIGNMENT_TTL_S = 30.0
#: Seconds between two reads of the assignments at least.
REFRESH_MIN_S = 1.0


_JSON = {"Content-Type": "application/json"}
#: Values of a query parameter a FastAPI ``bool`` reads as true.
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_EXPLAINED = ("/recommendations", "/interest")

FastAnswer = Callable[[Scope, Send], Awaitable[bool]]
"""Answers a request itself (``True``) or leaves it to the app (``False``)."""


def _asks_explain(scope: Scope) -> bool:
    """Whether a request is ``GET /v1/users/{id}/recommendations|interest?explain=true``."""
    qs: bytes = scope.get("query_string", b"")
    if b"explain" not in qs:
        return False
    path: str = scope.get("path", "")
    if not path.startswith("/v1/users/") or not path.endswith(_EXPLAINED):
        return False
    return any(
        k == "explain" and v.strip().lower() in _TRUE
        for k, v in parse_qsl(qs.decode("latin-1"), keep_blank_values=True)
    )


class ExplainAdmission:
    """Pure-ASGI admission control for ``explain=true`` (users' recommendations, interest).

    At most ``limit`` such requests are in flight in this process; one more is answered
    503 ``explain_unavailable`` with ``Retry-After`` before any work (no search, no
    worker call), so under overload explanations are refused in microseconds and the
    plain queries of the same event loop keep their latency. ``limit`` 0: no bound.
    Audience explanations (``POST /v1/audience``, explain in the body) are not counted.
    """

    def __init__(self, app: ASGIApp, limit: int, fast: FastAnswer | None = None) -> None:
        """Wrap ``app``; ``fast`` answers an admitted explanation without the app when it
        can (:class:`~.explain_fast.FastExplain`; it returns ``False`` when it cannot)."""
        self.app = app
        self.limit = limit
        self.fast = fast
        self.inflight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http" or not _asks_explain(scope):
            await self.app(scope, receive, send)
            return
        if self.limit <= 0:
            if self.fast is None or not await self.fast(scope, send):
                await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            self.refused += 1
            await self._refuse(scope, send)
            return
        self.inflight += 1
        try:
            if self.fast is None or not await self.fast(scope, send):
                await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        end = "recommendations" if scope["path"].endswith("/recommendations") else "interest"
        # the route template, for the latency metric of the middleware around this one
        scope["route"] = SimpleNamespace(path=f"/v1/users/{{user_id:path}}/{end}")
        detail = f"{self.inflight} explanations are in flight (the API's bound); retry shortly"
        body = json.dumps(error_body("explain_unavailable", detail)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def partition_of(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key ``user_id``."""
    return int(murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


def worker_urls(settings: Settings) -> list[str]:
    """The workers' web addresses from ``INTEREST_WORKER_URLS`` (no trailing slash)."""
    raw = str(getattr(settings, "worker_urls", "") or "")
    return [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]


class WorkerDirectory:
    """Sends explanation questions to the worker holding each user.

    Args:
        urls: The workers' web addresses.
        timeout_s: Seconds per worker request.
    """

    def __init__(self, urls: Sequence[str], timeout_s: float = 5.0) -> None:
        self.urls = list(urls)
        self.timeout_s = timeout_s
        self._client: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: dict[int, str] = {}
        self._partitions: int | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    def client(self) -> aiohttp.ClientSession:
        """The shared HTTP client (made on first use, in the serving event loop).

        aiohttp, not httpx: a worker round trip costs the API ~0.1 ms of CPU instead of
        ~1 ms (measured, docs/RESULTS.md "Latency of explain=true").
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._client = aiohttp.ClientSession(connector=connector, timeout=timeout)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            if not self._client.closed and self._loop is asyncio.get_running_loop():
                await self._client.close()
            self._client = None

    async def refresh(self) -> None:
        """Read every worker's ``/assignment/`` (unreachable workers are skipped).

        At most one read per :data:`REFRESH_MIN_S` (requests that ask meanwhile share the
        last one), and a read nobody answers keeps the known map: under overload every
        request refreshing in turn behind the lock, each waiting for a connection, and
        emptying the map for the next ones, stalled ``explain=true`` for minutes.
        """
        async with self._lock:
            if self._read_at and time.monotonic() - self._read_at < REFRESH_MIN_S:
                return
            owner: dict[int, str] = {}
            count = None

            async def one(url: str) -> None:
                nonlocal count
                try:
                    async with self.client().get(f"{url}/assignment/") as r:
                        raw = await r.read() if r.status == 200 else None
                    body = json.loads(raw) if raw is not None else None
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return
                if not isinstance(body, dict):
                    return
                count = int(body.get("partition_count") or 0) or count
                for p in body.get("partitions") or []:
                    owner[int(p)] = url

            await asyncio.gather(*(one(u) for u in self.urls))
            if owner:
                self._owner, self._partitions = owner, count
            self._read_at = time.monotonic()

    async def _owner_of(self, user_id: str) -> str | None:
        if not self._owner or time.monotonic() - self._read_at > ASSIGNMENT_TTL_S:
            await self.refresh()
        if not self._partitions:
            return None
        return self._owner.get(partition_of(user_id, self._partitions))

    async def explain(
        self,
        user_id: str,
        targets: np.ndarray,
        *,
        horizon: str,
        weight: float,
        top: int,
        long_events: int | None = None,
        rerank: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The worker's explanation of ``user_id`` for ``targets`` (``[T, dim]``).

        Args:
            rerank: The re-ranker's score to explain instead of the vector score
                (``streams.explain_rerank.rerank_spec``).

        Raises:
            ApiError: 503 ``explain_unavailable`` (no worker configured or reachable, or
                the worker's explanation queue is full: ``Retry-After``), 404
                ``unknown_user`` (no worker holds a window of the user).
        """
        if not self.urls:
            raise ApiError(
                503,
                "explain_unavailable",
                "explanations need the workers' addresses: set INTEREST_WORKER_URLS",
            )
        t = np.ascontiguousarray(targets, dtype="<f4")
        body: dict[str, Any] = {
            "user_id": user_id, "n_targets": int(t.shape[0]),
            "targets_f32": base64.b64encode(t.tobytes()).decode("ascii"),
            "horizon": horizon, "weight": weight, "top": top,
        }  # fmt: skip
        if long_events is not None:
            body["long_events"] = long_events
        if rerank is not None:
            body["rerank"] = rerank
        payload = json.dumps(body, separators=(",", ":")).encode()  # once, for every ask
        owner = await self._owner_of(user_id)
        reached: set[str] = set()
        if owner is not None:
            got = await self._ask(owner, payload, reached)
            if got is not None:
                return got
        await self.refresh()  # moved, rebalanced, or a worker came back: ask everyone
        first = await self._owner_of(user_id)
        order = ([first] if first else []) + [u for u in self.urls if u != first]
        for url in order:
            if url == owner:
                continue
            got = await self._ask(url, payload, reached)
            if got is not None:
                return got
        if reached:
            raise ApiError(404, "unknown_user", f"unknown user {user_id!r}")
        raise ApiError(
            503,
            "explain_unavailable",
            f"no worker answered for explanations ({', '.join(self.urls)})",
        )

    async def _ask(self, url: str, payload: bytes, reached: set[str]) -> dict[str, Any] | None:
        """One worker's answer to the JSON ``payload`` (None on 404, 503 or no connection).

        Raises:
            ApiError: 503 when the worker is busy (429) or too slow (a timeout: asking
                every other worker would only add load), 422 on its 400.
        """
        try:
            async with self.client().post(f"{url}/explain/", data=payload, headers=_JSON) as r:
                status, raw = r.status, await r.read()
                retry = r.headers.get("Retry-After", "1")
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            raise ApiError(
                503,
                "explain_unavailable",
                f"the worker holding the user did not explain within {self.timeout_s} s",
                headers={"Retry-After": "1"},
            ) from exc
        except aiohttp.ClientError as exc:
            log.warning("worker %s did not answer an explanation: %r", url, exc)
            return None
        if status == 200:
            answer: dict[str, Any] = json.loads(raw)
            return answer
        if status == 404:
            reached.add(url)
            return None
        if status == 400:
            raise ApiError(422, "invalid_request", f"explain: {json.loads(raw).get('detail')}")
        if status == 429:  # the worker's queue is full: say so now, do not fan out
            raise ApiError(
                503,
                "explain_unavailable",
                "the worker holding the user is at its explanation capacity; retry shortly",
                headers={"Retry-After": retry},
            )
        log.warning("worker %s answered an explanation with %d", url, status)
        return None


def info(answer: dict[str, Any]) -> dict[str, Any]:
    """The ``explain`` block of an answer (what the explanation was computed from)."""
    keys = ("version", "model_version", "history_events", "occluded", "older_events")
    scorer = answer.get("scorer", "vector")
    return {"method": "occlusion", "scorer": scorer, **{k: answer[k] for k in keys}}


def rank_weights(n: int) -> np.ndarray:
    """DCG weights ``1 / log2(rank + 2)`` of ranked hits (as the dashboard's categories)."""
    return np.asarray(1.0 / np.log2(np.arange(n) + 2.0), dtype=np.float64)


def category_targets(
    hits: Sequence[tuple[str, float]],
    vectors: np.ndarray,
    categories: Sequence[str | None],
    wanted: Sequence[str],
) -> np.ndarray:
    """One target per wanted category: the rank-weighted mean vector of its hits.

    The inner product is linear, so a user's score for it is the rank-weighted mean of
    the user's scores for the category's items among ``hits``.
    """
    w = rank_weights(len(hits))
    out = np.zeros((len(wanted), vectors.shape[1]), dtype=np.float32)
    for r, cat in enumerate(wanted):
        sel = np.asarray([c == cat for c in categories], dtype=bool)
        ws = w * sel
        out[r] = (ws[:, None] * vectors).sum(0) / max(ws.sum(), 1e-12)
    return out
