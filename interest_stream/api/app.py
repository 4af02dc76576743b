"""The FastAPI application: :func:`create_app` and :func:`serve`.

On creation the item index is built from the model checkpoint (when one is
configured); on start-up a background consumer reads the whole ``user-interest``
topic into the user index. ``/readyz`` answers 200 once it caught up.

Endpoints (see DESIGN.md; the OpenAPI docs are served at ``/docs``):

====================================================  ========================================
``GET /v1/users/{user_id}/interest``                   the user's output record
``GET /v1/users/{user_id}/recommendations``            nearest items (``k``, ``horizon``,
                                                       ``exclude=recent,purchased|seen|none``)
``GET /v1/items/{item_id}/similar``                    nearest items to an item
``POST /v1/audience``                                  nearest users to an item id or a vector
``DELETE /v1/users/{user_id}``                         forget a user (admin bearer token)
``GET /healthz`` / ``/readyz`` / ``/metrics`` / ``/``  liveness, readiness, Prometheus, page
====================================================  ========================================

Errors are JSON ``{"error", "detail"}``: unknown id 404, bad parameter 422,
body over the limit 413, missing/wrong admin token 401/403, no model loaded 503.
"""

# No ``from __future__ import annotations`` here: FastAPI must evaluate the
# route signatures, which use names local to ``_add_routes`` (k's bound, the bearer).
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import Depends, FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from interest_stream import __version__
from interest_stream.api.consumer import OutputConsumer
from interest_stream.api.dashboard import dashboard_router
from interest_stream.api.errors import ApiError, PublishError, error_body, install_error_handlers
from interest_stream.api.forget import ForgetHook, KafkaPublisher, Publisher, worker_forget_hook
from interest_stream.api.metrics import ApiMetrics
from interest_stream.api.middleware import BodyLimitMiddleware, TimingMiddleware
from interest_stream.api.schemas import (
    AudienceOut,
    AudienceRequest,
    ErrorOut,
    ForgetOut,
    Horizon,
    InterestOut,
    RecommendationsOut,
    SimilarOut,
)
from interest_stream.core.settings import Settings, load_settings
from interest_stream.index.faiss_backend import set_threads
from interest_stream.index.item_index import ItemIndex
from interest_stream.index.user_index import UserIndex

__all__ = ["ApiState", "create_app", "get_state", "serve"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Largest request body (``INTEREST_API_MAX_BODY_BYTES``, default 1 MiB)."""

EXCLUDE_TOKENS = ("none", "recent", "purchased", "seen")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 503)
}


@dataclass
class ApiState:
    """Everything the endpoints share; one per app (``app.state.api``).

    Attributes:
        settings: The settings the app was created with.
        users: The user index (also the user store).
        items: The item index, ``None`` without a model checkpoint.
        metrics: Prometheus collectors.
        consumer: The output-topic consumer (``None`` when disabled, e.g. in tests).
        publisher: Writes tombstones for DELETE.
        forget_hooks: Called after a user was forgotten (worker-side deletion hook).
        started_at: Creation time (epoch seconds).
    """

    settings: Settings
    users: UserIndex
    items: ItemIndex | None
    metrics: ApiMetrics
    consumer: OutputConsumer | None
    publisher: Publisher
    forget_hooks: list[ForgetHook] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the replica is ready, and why (JSON)."""
        n_items = 0 if self.items is None else self.items.count()
        info: dict[str, Any] = {"users": self.users.count(), "items": n_items}
        if self.consumer is None:
            return True, {"status": "ready", "consumer": "disabled", **info}
        c = self.consumer
        info.update(lag=c.lag, consumer=c.status)
        return c.ready, {"status": "ready" if c.ready else c.status, **info}


def get_state(app: FastAPI) -> ApiState:
    """The :class:`ApiState` of an app made by :func:`create_app`."""
    state = getattr(app.state, "api", None)
    if not isinstance(state, ApiState):
        raise RuntimeError("this FastAPI app was not made by interest_stream.api.create_app")
    return state


def _setting(settings: Settings, name: str, default: T) -> T:
    """A setting that may not exist yet in :class:`Settings` (asked of the coordinator)."""
    value = getattr(settings, name, None)
    return default if value is None else value


def _load_items(settings: Settings, model_dir: Path | str | None) -> ItemIndex | None:
    folder = Path(model_dir) if model_dir is not None else settings.model_dir
    if folder is None:
        logger.warning(
            "no model checkpoint (INTEREST_MODEL_DIR unset): recommendations, similar items "
            "and audience by item_id answer 503"
        )
        return None
    return ItemIndex.from_checkpoint(folder)


def create_app(
    settings: Settings | None = None,
    *,
    model_dir: Path | str | None = None,
    item_index: ItemIndex | None = None,
    user_index: UserIndex | None = None,
    start_consumer: bool = True,
    publisher: Publisher | None = None,
    forget_hooks: Sequence[ForgetHook] | None = None,
    offload_search: bool = False,
) -> FastAPI:
    """Build the API application.

    Args:
        settings: Settings (default: read from the environment).
        model_dir: Checkpoint folder for the item index; overrides
            ``settings.model_dir``. The checkpoint is loaded here, so a broken
            one fails at once with its error.
        item_index: A ready item index (tests, benchmarks); skips ``model_dir``.
        user_index: A ready user index (tests, benchmarks); default: an empty
            one of the model's dimension and blend weight.
        start_consumer: Run the output-topic consumer on start-up. Without it
            the app is ready at once and the user index is fed by the caller.
        publisher: Writes tombstones (default: a Kafka producer, created lazily).
        forget_hooks: Called after each forgotten user (default: a forget
            command to the worker's command topic, :func:`worker_forget_hook`).
        offload_search: Also run item searches (recommendations, similar) in
            the thread pool. Off by default: an exact search over ~50k items
            takes ~0.5 ms, and the thread hop costs 0.1-0.4 ms of CPU more than
            it saves on a 2-core machine (measured). Audience searches (over up
            to millions of users, k up to ``max_k``) always run in the pool;
            FAISS releases the GIL there.

    Raises:
        InterestStreamError: The checkpoint cannot be read (``CheckpointError``,
            ``SnapshotError``).
    """
    settings = settings or load_settings()
    set_threads(int(_setting(settings, "index_threads", 1)))
    items = item_index if item_index is not None else _load_items(settings, model_dir)
    users = (
        user_index
        if user_index is not None
        else UserIndex(
            items.dim if items is not None else None,
            blend_weight=items.blend_alpha if items is not None else 0.5,
            model_version=None if items is None else items.model_version,
            # k-means of a growing index runs beside the consumer, not in it: a
            # replica rebuilding 100k+ users from the topic never stalls on it
            background_rebuild=True,
        )
    )
    metrics = ApiMetrics(users=lambda: float(users.count()),
                         items=lambda: float(0 if items is None else items.count()))  # fmt: skip
    consumer = (
        OutputConsumer(settings, users, metrics, dim=users.dim or (items.dim if items else None))
        if start_consumer
        else None
    )
    if consumer is None:
        metrics.ready.set(1)
    state = ApiState(
        settings=settings,
        users=users,
        items=items,
        metrics=metrics,
        consumer=consumer,
        publisher=publisher or KafkaPublisher(settings),
        forget_hooks=list(forget_hooks)
        if forget_hooks is not None
        else [worker_forget_hook(settings)],
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.consumer is not None:
            state.consumer.start()
        try:
            yield
        finally:
            if state.consumer is not None:
                await anyio.to_thread.run_sync(state.consumer.stop)
            state.publisher.close()
            for hook in state.forget_hooks:
                close = getattr(hook, "close", None)
                if callable(close):
                    close()

    app = FastAPI(
        title="interest-stream",
        version=__version__,
        description="Real-time user-interest vectors: recommendations, similar items, "
        "audiences. Errors are JSON {error, detail}.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.api = state
    install_error_handlers(app)
    app.add_middleware(TimingMiddleware, metrics=metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=int(_setting(settings, "api_max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
    )
    _add_routes(app, state, offload_search)
    app.include_router(dashboard_router(state))
    return app


# --------------------------------------------------------------------------- routes
UserId = Annotated[str, PathParam(min_length=1, max_length=128, description="The user id.")]
ItemId = Annotated[str, PathParam(min_length=1, max_length=128, description="The item id.")]


def _require_items(state: ApiState) -> ItemIndex:
    if state.items is None:
        raise ApiError(
            503,
            "model_not_loaded",
            "no model checkpoint is loaded; start the API with INTEREST_MODEL_DIR set",
        )
    return state.items


def _exclusions(spec: str | None, recent: Sequence[str], purchased: Sequence[str]) -> set[str]:
    if not spec:
        return set()
    tokens = {t.strip().lower() for t in spec.split(",") if t.strip()}
    unknown = sorted(tokens - set(EXCLUDE_TOKENS))
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            f"query.exclude: unknown value(s) {', '.join(unknown)}; use a comma-separated "
            f"list of {', '.join(EXCLUDE_TOKENS)}",
        )
    out: set[str] = set()
    if tokens & {"recent", "seen"}:
        out.update(recent)
    if tokens & {"purchased", "seen"}:
        out.update(purchased)
    return out


def _add_routes(app: FastAPI, state: ApiState, offload: bool) -> None:
    settings = state.settings

    async def call(fn: Callable[..., T], *args: Any) -> T:
        if offload:
            return await anyio.to_thread.run_sync(fn, *args)
        return fn(*args)

    max_k = settings.max_k
    bearer = HTTPBearer(auto_error=False, description="INTEREST_ADMIN_TOKEN")
    KParam = Annotated[int, Query(ge=1, le=max_k, description=f"Results, 1..{max_k}.")]

    def require_admin(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        token = settings.admin_token
        if token is None or not token.get_secret_value():
            raise ApiError(
                403, "admin_disabled", "admin calls are disabled: set INTEREST_ADMIN_TOKEN"
            )
        if creds is None or not creds.credentials:
            raise ApiError(
                401,
                "unauthorized",
                "missing bearer token: send 'Authorization: Bearer <INTEREST_ADMIN_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(
            creds.credentials.encode("utf-8"), token.get_secret_value().encode("utf-8")
        ):
            raise ApiError(403, "forbidden", "the admin token is wrong")

    @app.get("/v1/users/{user_id:path}/interest", response_model=InterestOut, tags=["users"])
    async def user_interest(user_id: UserId) -> dict[str, Any]:
        """The user's current interest record (404 if unknown)."""
        return state.users.get(user_id).to_dict()

    @app.get(
        "/v1/users/{user_id:path}/recommendations",
        response_model=RecommendationsOut,
        tags=["users"],
    )
    async def recommendations(
        user_id: UserId,
        k: KParam = 10,
        horizon: Annotated[Horizon, Query(description="Which user vector to use.")] = "blend",
        exclude: Annotated[
            str | None,
            Query(
                description="Comma-separated: 'recent' (items in the record's recent_items), "
                "'purchased' (its purchased list), 'seen' (both), 'none' (default). "
                "Records without those lists exclude nothing.",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Items nearest the user's interest vector, best first."""
        items = _require_items(state)
        if exclude and exclude.strip().lower() != "none":
            rec = state.users.get(user_id)
            skip = _exclusions(exclude, rec.recent_items, rec.purchased)
        else:
            _exclusions(exclude, (), ())
            skip = set()
        vec = state.users.vector(user_id, horizon)
        hits = await call(lambda: items.search(vec, k, exclude=skip))
        return {
            "user_id": user_id,
            "horizon": horizon,
            "items": [{"item_id": i, "score": s} for i, s in hits],
        }

    @app.get("/v1/items/{item_id:path}/similar", response_model=SimilarOut, tags=["items"])
    async def similar(item_id: ItemId, k: KParam = 10) -> dict[str, Any]:
        """Items nearest an item (itself excluded)."""
        items = _require_items(state)
        hits = await call(items.similar, item_id, k)
        return {"item_id": item_id, "items": [{"item_id": i, "score": s} for i, s in hits]}

    @app.post("/v1/audience", response_model=AudienceOut, tags=["audience"])
    async def audience(body: AudienceRequest) -> dict[str, Any]:
        """Users whose interest is nearest an item of the catalogue or an item/ad vector."""
        if body.k > max_k:
            raise ApiError(422, "invalid_request", f"body.k: must be between 1 and {max_k}")
        users = state.users
        if body.item_id is not None:
            query = _require_items(state).vector(body.item_id)
        else:
            assert body.vector is not None
            expected = users.dim or (state.items.dim if state.items is not None else None)
            if expected is not None and len(body.vector) != expected:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"body.vector: has dimension {len(body.vector)}, expected {expected}",
                )
            query = body.vector  # type: ignore[assignment]
        if users.dim is None:
            return {"users": []}
        found, scores = await anyio.to_thread.run_sync(users.search, query, body.k, body.horizon)
        return {
            "users": [
                {"user_id": u, "score": float(s)}
                for u, s in zip(found[0], scores[0].tolist(), strict=False)
            ]
        }

    @app.delete(
        "/v1/users/{user_id:path}",
        response_model=ForgetOut,
        tags=["admin"],
        dependencies=[Depends(require_admin)],
    )
    async def forget_user(user_id: UserId) -> dict[str, Any]:
        """Forget a user: tombstone on the output topic, removal from this replica, hooks.

        Every replica drops the user when its consumer reads the tombstone; the
        worker deletes its state on the forget command sent by the default hook.
        A failed hook answers 503 (the call is idempotent: retry it).
        """
        held = user_id in state.users  # before the tombstone: our consumer may apply it first
        try:
            await anyio.to_thread.run_sync(state.publisher.tombstone, user_id)
        except PublishError as exc:
            raise ApiError(503, "kafka_unavailable", str(exc)) from exc
        removed = await anyio.to_thread.run_sync(state.users.remove, user_id) or held
        failed: list[str] = []
        for hook in state.forget_hooks:
            try:
                await anyio.to_thread.run_sync(hook, user_id)
            except Exception as exc:
                logger.exception("forget hook %r failed for user %r", hook, user_id)
                failed.append(f"{type(exc).__name__}: {exc}")
        if failed:
            raise ApiError(
                503,
                "kafka_unavailable",
                f"user {user_id!r} was removed from the output topic but not everywhere: "
                + "; ".join(failed)
                + "; retry the DELETE",
            )
        state.metrics.forgotten.inc()
        logger.info("forgot user %r (held here: %s)", user_id, removed)
        return {"user_id": user_id, "removed": removed, "tombstone": True}

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        c = state.consumer
        return {
            "status": "ok",
            "uptime_s": round(time.time() - state.started_at, 1),
            "consumer": None if c is None else {**c.describe(), "thread_alive": c.alive},
        }

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorOut}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the consumer caught up with the topic's end at start-up."""
        ok, info = state.readiness()
        if ok:
            return JSONResponse(info)
        lag = info.get("lag")
        detail = (
            f"catching up with {settings.output_topic}: "
            + ("connecting" if lag is None else f"{lag} messages behind")
            + (f" ({state.consumer.error})" if state.consumer and state.consumer.error else "")
        )
        return JSONResponse(error_body("not_ready", detail, **info), status_code=503)

    @app.get("/v1/stats", tags=["ops"])
    async def stats() -> dict[str, Any]:
        """Live figures for people and tools: users, items, lag, freshness quantiles."""
        ok, info = state.readiness()
        return {
            "ready": ok,
            "users": state.users.count(),
            "items": 0 if state.items is None else state.items.count(),
            "model_version": None if state.items is None else state.items.model_version,
            "lag": info.get("lag"),
            "freshness": state.metrics.freshness_summary(),
        }

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def serve(settings: Settings | None = None, **app_options: Any) -> None:
    """Run the API with uvicorn on ``settings.api_host:api_port`` until stopped.

    Args:
        settings: Settings (default: from the environment).
        **app_options: Passed to :func:`create_app`.
    """
    import uvicorn

    settings = settings or load_settings()
    app = create_app(settings, **app_options)
    logger.info("serving on http://%s:%d", settings.api_host, settings.api_port)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
    )
