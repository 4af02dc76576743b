"""Client helpers for downstream consumers: the ``user-interest`` topic and the HTTP API.

Read the compacted output topic as typed messages (decoded by
:func:`interest_stream.core.records.decode_record`, as the API decodes them)::

    from interest_stream.client import InterestTombstone, InterestTopicReader

    with InterestTopicReader(settings, stop_at_end=True) as reader:
        for msg in reader:
            if isinstance(msg, InterestTombstone):
                forget(msg.user_id)
            else:
                store(msg.user_id, msg.version, msg.record.short, msg.record.long)

Query a running ``interest-stream serve``::

    from interest_stream.client import InterestClient, NotFound

    with InterestClient("http://127.0.0.1:8000") as api:
        for hit in api.recommendations("1000169", k=5, horizon="short"):
            print(hit.item_id, hit.score)

Every error is an :class:`~interest_stream.core.errors.InterestStreamError`:
:class:`ApiRequestError` subclasses by HTTP status (:class:`NotFound`, :class:`InvalidRequest`,
:class:`Unauthorized`, :class:`Forbidden`, :class:`Conflict`,
:class:`ServiceUnavailable`), :class:`ApiUnreachable` when no answer came,
:class:`TopicNotFound` and :class:`~interest_stream.core.records.MalformedRecord` for the
topic. The client imports neither FastAPI nor torch nor Faust.

Over 500 lines: the topic reader and the HTTP client share one import for applications,
and the HTTP client is one typed method per route (with their ``explain`` options).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.records import (
    AudienceOut,
    ForgetOut,
    Horizon,
    InterestOut,
    MalformedRecord,
    Ranking,
    RecommendationsOut,
    ScoredItem,
    ScoredUser,
    SimilarOut,
    Tombstone,
    UserRecord,
    decode_record,
)
from interest_stream.core.settings import Settings, load_settings

__all__ = [
    "ApiRequestError",
    "ApiUnreachable",
    "Conflict",
    "Forbidden",
    "ForgetOut",
    "InterestClient",
    "InterestMessage",
    "InterestOut",
    "InterestTombstone",
    "InterestTopicReader",
    "InterestUpdate",
    "InvalidRequest",
    "MalformedRecord",
    "NotFound",
    "ScoredItem",
    "ScoredUser",
    "ServiceUnavailable",
    "TopicNotFound",
    "TopicPosition",
    "Unauthorized",
    "latest_interest",
    "read_interest",
]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class _Closing:
    """A context manager that calls ``self.close()`` on exit."""

    def close(self) -> None:
        """Release the resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# =========================================================================== topic
class TopicNotFound(InterestStreamError):
    """The output topic does not exist on the broker (yet)."""


@dataclass(frozen=True, slots=True)
class TopicPosition:
    """Where a message sits: topic, partition, offset and its Kafka timestamp (ms)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class InterestUpdate:
    """A user's new interest vectors (a non-null value of the output topic).

    Attributes:
        record: The decoded record: ``user_id``, ``version``, ``short`` / ``long``
            (float32 ``[dim]``), ``event_time``, ``updated_at``, ``model_version``,
            ``recent_items``, ``purchased``, ``produced_at``.
        position: Where it was read.
    """

    record: UserRecord
    position: TopicPosition

    @property
    def user_id(self) -> str:
        """The user."""
        return self.record.user_id

    @property
    def version(self) -> int:
        """Grows with every applied event of the user: drop updates older than held."""
        return self.record.version


@dataclass(frozen=True, slots=True)
class InterestTombstone:
    """A null value: the user was forgotten; delete everything held about them."""

    user_id: str
    position: TopicPosition


InterestMessage = InterestUpdate | InterestTombstone
"""What :class:`InterestTopicReader` yields."""


class InterestTopicReader(_Closing):
    """Iterates over the output topic (all partitions, no consumer group) as typed messages.

    Messages come in offset order per partition. Malformed ones are logged and
    skipped (``on_malformed="skip"``, the default) or raise :class:`MalformedRecord`
    (``"raise"``).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        start: Literal["beginning", "end"] = "beginning",
        stop_at_end: bool = False,
        idle_timeout_s: float | None = None,
        dim: int | None = None,
        on_malformed: Literal["skip", "raise"] = "skip",
        poll_ms: int = 200,
        max_records: int = 2000,
    ) -> None:
        """Prepare the reader (it connects on first iteration).

        Args:
            settings: Kafka bootstrap/security and ``output_topic`` (default: environment).
            start: Read from the topic's beginning (the full compacted state) or
                only what arrives after the reader connected.
            stop_at_end: Stop once the end offsets seen at connection are reached.
            idle_timeout_s: Stop after this long without a message (``None``: never).
            dim: Expected vector dimension (``None``: any; short and long must agree).
            on_malformed: ``"skip"`` (log and go on) or ``"raise"``.
            poll_ms: Poll timeout.
            max_records: Most messages per poll.
        """
        if on_malformed not in ("skip", "raise"):
            raise ValueError(f"on_malformed must be 'skip' or 'raise', got {on_malformed!r}")
        self.settings = settings or load_settings()
        self.topic = self.settings.output_topic
        self.start = start
        self.stop_at_end = stop_at_end
        self.idle_timeout_s = idle_timeout_s
        self.dim = dim
        self.on_malformed = on_malformed
        self.poll_ms = poll_ms
        self.max_records = max_records
        self.malformed = 0
        self._consumer: Any = None

    def _connect(self) -> tuple[Any, list[Any]]:
        # lazy on purpose: HTTP-only users of the client skip kafka-python's ~0.2 s import
        from kafka import KafkaConsumer, TopicPartition

        self.close()  # a second iteration starts over with a new consumer
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="interest-stream-client",
            max_poll_records=self.max_records,
            fetch_max_wait_ms=100,
            **self.settings.kafka_client_config(),
        )
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            consumer.close()
            raise TopicNotFound(
                f"topic {self.topic!r} does not exist on {self.settings.kafka_bootstrap} "
                "(INTEREST_OUTPUT_TOPIC; the worker or `interest-stream topics` creates it)"
            )
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if self.start == "beginning":
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
            for tp in tps:  # resolve the lazy seek now: "end" means end at connection
                consumer.position(tp)
        self._consumer = consumer
        return consumer, tps

    def _decode(self, r: Any) -> InterestMessage | None:
        pos = TopicPosition(r.topic, r.partition, r.offset, r.timestamp)
        try:
            item = decode_record(r.key, r.value, dim=self.dim)
        except MalformedRecord as exc:
            self.malformed += 1
            if self.on_malformed == "raise":
                raise MalformedRecord(f"{r.topic}[{r.partition}]@{r.offset}: {exc}") from exc
            logger.warning("skipping malformed record %s[%d]@%d: %s",
                           r.topic, r.partition, r.offset, exc)  # fmt: skip
            return None
        if isinstance(item, Tombstone):
            return InterestTombstone(item.user_id, pos)
        return InterestUpdate(item, pos)

    def __iter__(self) -> Iterator[InterestMessage]:
        """The messages, until the end (``stop_at_end``), the idle timeout, or :meth:`close`."""
        consumer, tps = self._connect()
        end = dict(consumer.end_offsets(tps)) if self.stop_at_end else {}
        last_message = time.monotonic()
        while self._consumer is not None:
            if self.stop_at_end and all(consumer.position(tp) >= end[tp] for tp in tps):
                return
            batch = consumer.poll(timeout_ms=self.poll_ms, max_records=self.max_records)
            if batch:
                last_message = time.monotonic()
            elif (
                self.idle_timeout_s is not None
                and time.monotonic() - last_message >= self.idle_timeout_s
            ):
                return
            for records in batch.values():
                for r in records:
                    msg = self._decode(r)
                    if msg is not None:
                        yield msg

    def close(self) -> None:
        """Close the Kafka consumer (ends an iteration in progress)."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def read_interest(settings: Settings | None = None, **options: Any) -> Iterator[InterestMessage]:
    """Iterate over the output topic; ``options`` as :class:`InterestTopicReader`."""
    with InterestTopicReader(settings, **options) as reader:
        yield from reader


def latest_interest(settings: Settings | None = None, **options: Any) -> dict[str, InterestUpdate]:
    """Each user's newest update, read from the beginning to the current end of the topic.

    The highest version wins; a tombstone removes what came before it (as the API's
    replicas apply the topic). ``options`` as :class:`InterestTopicReader`
    (``start`` and ``stop_at_end`` are fixed here).
    """
    latest: dict[str, InterestUpdate] = {}
    for msg in read_interest(settings, start="beginning", stop_at_end=True, **options):
        if isinstance(msg, InterestTombstone):
            latest.pop(msg.user_id, None)
            continue
        held = latest.get(msg.user_id)
        if held is None or msg.version >= held.version:
            latest[msg.user_id] = msg
    return latest


# =========================================================================== HTTP
class ApiRequestError(InterestStreamError):
    """The API answered with an error status.

    Attributes:
        status: HTTP status code.
        code: The body's ``error`` field (``unknown_user``, ``invalid_request`` ...).
        detail: The body's ``detail`` field.
    """

    def __init__(self, status: int, code: str, detail: Any) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class NotFound(ApiRequestError, LookupError):
    """404: unknown user or item (or no such route)."""


class InvalidRequest(ApiRequestError, ValueError):
    """422 bad parameter or body, 413 body too large."""


class Unauthorized(ApiRequestError):
    """401: the admin call needs a bearer token."""


class Forbidden(ApiRequestError):
    """403: wrong admin token, or admin calls disabled on the server."""


class Conflict(ApiRequestError):
    """409: e.g. a vector of another dimension than the model's."""


class ServiceUnavailable(ApiRequestError):
    """503: no model loaded, replica not ready, or Kafka unavailable."""


class ApiUnreachable(InterestStreamError):
    """No answer: connection refused, timeout, or a body that is not the API's."""


_BY_STATUS: dict[int, type[ApiRequestError]] = {
    404: NotFound,
    413: InvalidRequest,
    422: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    409: Conflict,
    503: ServiceUnavailable,
}


def _seg(value: str) -> str:
    """One path segment, percent-encoded (``/``, ``?``, ``#`` included)."""
    return quote(value, safe="")


class InterestClient(_Closing):
    """A small typed client of ``interest-stream serve`` (synchronous, httpx).

    Answers are the API's own response models (:mod:`interest_stream.core.records`).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        admin_token: str | None = None,
        timeout: float = 5.0,
        http: httpx.Client | None = None,
    ) -> None:
        """Create the client.

        Args:
            base_url: The API's address.
            admin_token: ``INTEREST_ADMIN_TOKEN`` of the server, for :meth:`forget`.
            timeout: Seconds per request.
            http: A ready ``httpx.Client`` (e.g. FastAPI's ``TestClient``); it is
                not closed by :meth:`close`. ``base_url``/``timeout`` are then ignored.
        """
        self._own = http is None
        self.http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self.admin_token = admin_token

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, model: type[M], **kw: Any) -> M:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
                code, detail = str(body["error"]), body.get("detail")
            except (ValueError, KeyError, TypeError):
                code, detail = "http_error", resp.text[:200]
            cls = _BY_STATUS.get(resp.status_code, ApiRequestError)
            raise cls(resp.status_code, code, detail)
        try:
            return model.model_validate_json(resp.content)
        except ValidationError as exc:
            raise ApiUnreachable(
                f"{method} {path}: the answer is not the API's {model.__name__}: {exc}"
            ) from exc

    # ------------------------------------------------------------------ endpoints
    def interest(self, user_id: str, *, explain: bool = False) -> InterestOut:
        """The user's current interest record.

        Args:
            user_id: The user.
            explain: Also the top items and categories of both vectors and the events
                behind each (``.explain``; asks the worker holding the user).

        Raises:
            NotFound: Unknown user. ServiceUnavailable: no worker for ``explain``.
        """
        params = {"explain": "true"} if explain else None
        return self._request(
            "GET", f"/v1/users/{_seg(user_id)}/interest", InterestOut, params=params
        )

    def recommendations(
        self,
        user_id: str,
        k: int = 10,
        *,
        horizon: Horizon = "blend",
        exclude: Sequence[str] | None = None,
        rank: Ranking | None = None,
        explain: bool = False,
    ) -> list[ScoredItem]:
        """Items recommended to the user, best first.

        Args:
            user_id: The user.
            k: Items to return.
            horizon: ``short``, ``long`` or ``blend``.
            exclude: Any of ``recent``, ``purchased``, ``seen``.
            rank: ``rerank`` or ``vector`` (default: the server's; ``rerank`` with
                ``horizon="blend"`` when the checkpoint has a re-ranker). The answer's
                ranking is in :meth:`recommendations_out`.
            explain: Also each item's ``because`` (the user's events behind its score;
                asks the worker holding the user).

        Raises:
            NotFound: Unknown user. ServiceUnavailable: no model loaded (or no worker
                for ``explain``).
        """
        return self.recommendations_out(
            user_id, k, horizon=horizon, exclude=exclude, rank=rank, explain=explain
        ).items

    def recommendations_out(
        self,
        user_id: str,
        k: int = 10,
        *,
        horizon: Horizon = "blend",
        exclude: Sequence[str] | None = None,
        rank: Ranking | None = None,
        explain: bool = False,
    ) -> RecommendationsOut:
        """The whole ``/recommendations`` answer (items and the ``ranking`` used).

        Raises:
            NotFound: Unknown user. ServiceUnavailable: no model loaded.
        """
        params: dict[str, Any] = {"k": k, "horizon": horizon}
        if exclude:
            params["exclude"] = ",".join(exclude)
        if rank is not None:
            params["rank"] = rank
        if explain:
            params["explain"] = "true"
        return self._request(
            "GET", f"/v1/users/{_seg(user_id)}/recommendations", RecommendationsOut, params=params
        )

    def similar(self, item_id: str, k: int = 10) -> list[ScoredItem]:
        """Items nearest an item (itself excluded), best first.

        Raises:
            NotFound: Unknown item.
        """
        path = f"/v1/items/{_seg(item_id)}/similar"
        return self._request("GET", path, SimilarOut, params={"k": k}).items

    def audience(
        self,
        *,
        item_id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        horizon: Horizon = "blend",
        explain: bool = False,
    ) -> list[ScoredUser]:
        """Users whose interest is nearest an item of the catalogue or an item/ad vector
        (``explain``: each user's ``because``, the events that put them in the audience).

        Raises:
            ValueError: Not exactly one of ``item_id`` / ``vector``, or a non-finite value.
            NotFound: Unknown item. InvalidRequest / Conflict: bad vector.
        """
        if (item_id is None) == (vector is None):
            raise ValueError("give exactly one of item_id and vector")
        body: dict[str, Any] = {"k": k, "horizon": horizon}
        if explain:
            body["explain"] = True
        if item_id is not None:
            body["item_id"] = item_id
        else:
            assert vector is not None
            values = [float(v) for v in vector]
            if not all(math.isfinite(v) for v in values):
                raise ValueError("vector holds NaN or infinite values")
            body["vector"] = values
        return self._request("POST", "/v1/audience", AudienceOut, json=body).users

    def forget(self, user_id: str) -> ForgetOut:
        """Forget a user everywhere (tombstone on the topic); needs ``admin_token``.

        Raises:
            Unauthorized: No token. Forbidden: wrong token or admin disabled.
            ServiceUnavailable: Kafka did not take the tombstone.
        """
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        return self._request("DELETE", f"/v1/users/{_seg(user_id)}", ForgetOut, headers=headers)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the HTTP connection pool (unless it was passed in)."""
        if self._own:
            self.http.close()
