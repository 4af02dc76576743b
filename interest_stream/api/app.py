"""The FastAPI application: :func:`create_app` and :func:`serve`.

On creation the item index is built from the model checkpoint (when one is
configured; a newer checkpoint in its folder replaces it live, ``model_watch``); on
start-up a background consumer reads the whole ``user-interest`` topic into the user
index; ``/readyz`` answers 200 once it caught up. The routes
(docs/CONTRACTS.md; OpenAPI at ``/docs``) are in ``routes_users`` (interest,
recommendations), ``routes_items`` (similar, audience), ``routes_admin`` (DELETE a
user), ``routes_ops`` (health, readiness, stats, metrics) and ``dashboard`` (``/``).
Errors are JSON ``{"error", "detail"}`` (:mod:`interest_stream.api.errors`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

from interest_stream import __version__
from interest_stream.api.consumer import OutputConsumer
from interest_stream.api.dashboard import LiveHistory, dashboard_router
from interest_stream.api.errors import install_error_handlers
from interest_stream.api.explain import ExplainAdmission, WorkerDirectory, worker_urls
from interest_stream.api.explain_fast import FastExplain
from interest_stream.api.fast_interest import FastInterest
from interest_stream.api.fast_path import FastRecommendations
from interest_stream.api.forget import ForgetHook, KafkaPublisher, Publisher, worker_forget_hook
from interest_stream.api.item_consumer import ItemVectorsConsumer
from interest_stream.api.metrics import ApiMetrics
from interest_stream.api.middleware import BodyLimitMiddleware, TimingMiddleware
from interest_stream.api.model_watch import ModelWatch
from interest_stream.api.opensearch_mode import opensearch_parts
from interest_stream.api.routes_admin import admin_router
from interest_stream.api.routes_items import items_router
from interest_stream.api.routes_ops import ops_router
from interest_stream.api.routes_users import users_router
from interest_stream.api.schemas import ErrorOut
from interest_stream.api.state import ApiState, get_state, setting
from interest_stream.core.settings import Settings, load_settings
from interest_stream.index.faiss_backend import set_threads
from interest_stream.index.item_index import ItemIndex
from interest_stream.index.user_index import UserIndex

__all__ = ["ApiState", "create_app", "get_state", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Largest request body (``INTEREST_API_MAX_BODY_BYTES``, default 1 MiB)."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 503)
}


def _load_items(settings: Settings, model_dir: Path | str | None) -> ItemIndex | None:
    folder = Path(model_dir) if model_dir is not None else settings.model_dir
    if folder is None:
        logger.warning(
            "no model checkpoint (INTEREST_MODEL_DIR unset): recommendations, similar items "
            "and audience by item_id answer 503"
        )
        return None
    return ItemIndex.from_checkpoint(folder, scan=settings.item_scan)


def create_app(
    settings: Settings | None = None,
    *,
    model_dir: Path | str | None = None,
    item_index: ItemIndex | None = None,
    user_index: UserIndex | None = None,
    start_consumer: bool = True,
    publisher: Publisher | None = None,
    forget_hooks: Sequence[ForgetHook] | None = None,
    offload_search: bool | None = None,
    fast_path: bool = True,
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
            the thread pool (default: ``settings.api_offload_search``, off: the
            thread hop costs more CPU per request than it gives back on 2 cores,
            docs/RESULTS.md issue #13). Audience searches (over up to millions of
            users, k up to ``max_k``) always run in the pool; FAISS releases the
            GIL there.
        fast_path: Answer plain ``/recommendations`` (also explained) and ``/interest``
            requests before FastAPI (:mod:`.fast_path`, :mod:`.fast_interest`).

    Raises:
        InterestStreamError: The checkpoint cannot be read (``CheckpointError``,
            ``SnapshotError``).
    """
    settings = settings or load_settings()
    set_threads(int(setting(settings, "index_threads", 1)))
    items = item_index if item_index is not None else _load_items(settings, model_dir)
    cluster = None
    if user_index is None and setting(settings, "user_store", "faiss") == "opensearch":
        users, cluster = opensearch_parts(settings, items)  # no users in memory
    else:
        users = user_index if user_index is not None else _empty_users(items)

    def n_items() -> float:  # read at scrape time: the item index follows the model folder
        return float(0 if state.items is None else state.items.count())

    metrics = ApiMetrics(users=lambda: float(users.count()), items=n_items)
    consumer = cluster or (
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
        offload_search=bool(setting(settings, "api_offload_search", False))
        if offload_search is None
        else offload_search,
        workers=WorkerDirectory(
            worker_urls(settings), float(setting(settings, "explain_timeout_s", 5.0))
        ),
    )
    if start_consumer:  # items born after the checkpoint, into whichever item index is current
        state.item_consumer = ItemVectorsConsumer(settings, lambda: state.items)
    return _make_app(state, fast_path)


def _empty_users(items: ItemIndex | None) -> UserIndex:
    """An empty user index of the model's dimension and blend weight."""
    return UserIndex(
        items.dim if items is not None else None,
        blend_weight=items.blend_alpha if items is not None else 0.5,
        model_version=None if items is None else items.model_version,
        # k-means of a growing index runs beside the consumer, not in it: a
        # replica rebuilding 100k+ users from the topic never stalls on it
        background_rebuild=True,
    )


async def _freeze_when_ready(state: ApiState) -> None:
    """Once the replica has caught up: one full collection, then every object alive moved
    out of the collector's reach (``gc.freeze``), so later full collections do not walk the
    users loaded at start (up to 229 ms each with 100,000 of them, measured)."""
    while state.consumer is not None and not state.consumer.ready:
        await asyncio.sleep(1.0)
    gc.collect()
    gc.freeze()
    logger.info("gc: %d objects frozen after catch-up", gc.get_freeze_count())


def _make_app(state: ApiState, fast_path: bool = True) -> FastAPI:
    """The FastAPI app over ``state``: lifespan, error handlers, middleware, routes.

    The lifespan also runs two small tasks: the dashboard's live history sampler and
    the model folder watch (a new checkpoint's item index is swapped in live).
    """
    history = LiveHistory(state)
    watch = ModelWatch(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.consumer is not None:
            state.consumer.start()
        if state.item_consumer is not None:
            state.item_consumer.start()
        tasks = [asyncio.create_task(history.run()), asyncio.create_task(watch.run()),
                 asyncio.create_task(_freeze_when_ready(state))]  # fmt: skip
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            gc.unfreeze()  # an app ended (tests run many in one process): collectable again
            if state.consumer is not None:
                await anyio.to_thread.run_sync(state.consumer.stop)
            if state.item_consumer is not None:
                await anyio.to_thread.run_sync(state.item_consumer.stop)
            state.publisher.close()
            await state.workers.aclose()
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
    # innermost: an explanation refused at the door is still timed and counted
    limit = int(setting(state.settings, "explain_max_inflight", 3))
    app.add_middleware(
        ExplainAdmission, limit=limit, fast=FastExplain(state) if fast_path else None
    )
    app.add_middleware(TimingMiddleware, metrics=state.metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=int(setting(state.settings, "api_max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
    )
    if fast_path:  # outermost: plain /recommendations and /interest skip the stack below
        app.add_middleware(FastRecommendations, state=state)
        app.add_middleware(FastInterest, state=state)  # and plain /interest ones (.fast_interest)
    for router in (users_router(state), items_router(state), admin_router(state),
                   ops_router(state), dashboard_router(state, history)):  # fmt: skip
        app.include_router(router)
    return app


def serve(settings: Settings | None = None, **app_options: Any) -> None:
    """Run the API with uvicorn on ``settings.api_host:api_port`` until stopped.

    Args:
        settings: Settings (default: from the environment).
        **app_options: Passed to :func:`create_app` (picklable ones with
            ``api_processes`` > 1: every process builds its own app).
    """
    import uvicorn  # lazy on purpose: only `serve` needs the server (tests, the client don't)

    settings = settings or load_settings()
    n = int(setting(settings, "api_processes", 1))
    if n > 1:  # a replica per process on one shared socket (.processes)
        from interest_stream.api.processes import run_processes, serve_child

        logger.info("serving on http://%s:%d, %d processes", settings.api_host,
                    settings.api_port, n)  # fmt: skip
        code = run_processes(n, serve_child, settings, app_options)
        if code:
            raise SystemExit(code)
        return
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
