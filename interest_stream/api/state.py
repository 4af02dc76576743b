"""What the endpoints share: :class:`ApiState` (one per app) and small helpers over it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio.to_thread
from fastapi import FastAPI

from interest_stream.api.consumer import OutputConsumer
from interest_stream.api.errors import ApiError
from interest_stream.api.explain import WorkerDirectory
from interest_stream.api.forget import ForgetHook, Publisher
from interest_stream.api.item_consumer import ItemVectorsConsumer
from interest_stream.api.metrics import ApiMetrics
from interest_stream.core.settings import Settings
from interest_stream.index.item_index import ItemIndex
from interest_stream.index.user_index import UserIndex

__all__ = ["ApiState", "get_state", "require_items", "setting"]

T = TypeVar("T")


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
        offload_search: Run item searches in the thread pool (see ``create_app``).
        workers: Where ``explain=true`` questions go (``INTEREST_WORKER_URLS``).
        started_at: Creation time (epoch seconds).
        item_consumer: The item-vectors consumer (items born after the checkpoint).
    """

    settings: Settings
    users: UserIndex
    items: ItemIndex | None
    metrics: ApiMetrics
    consumer: OutputConsumer | None
    publisher: Publisher
    forget_hooks: list[ForgetHook] = field(default_factory=list)
    offload_search: bool = False
    workers: WorkerDirectory = field(default_factory=lambda: WorkerDirectory([]))
    started_at: float = field(default_factory=time.time)
    item_consumer: ItemVectorsConsumer | None = None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the replica is ready, and why (JSON)."""
        n_items = 0 if self.items is None else self.items.count()
        info: dict[str, Any] = {"users": self.users.count(), "items": n_items}
        if self.consumer is None:
            return True, {"status": "ready", "consumer": "disabled", **info}
        c = self.consumer
        info.update(lag=c.lag, consumer=c.status)
        return c.ready, {"status": "ready" if c.ready else c.status, **info}

    async def search(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)``, in the thread pool when ``offload_search`` is set."""
        if self.offload_search:
            return await anyio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def users_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` on the user store: in the thread pool when it is remote.

        A remote store (OpenSearch, ``users.remote``) answers over the network: on the
        event loop when it has a coroutine for ``fn`` (``users.async_method``), else in
        the thread pool; the in-process one is called directly.
        """
        if getattr(self.users, "remote", False):
            coro = getattr(self.users, "async_method", lambda _fn: None)(fn)
            if coro is not None:  # reads the store answers on the event loop
                return cast(T, await coro(*args))
            return await anyio.to_thread.run_sync(fn, *args)
        return fn(*args)


def get_state(app: FastAPI) -> ApiState:
    """The :class:`ApiState` of an app made by ``create_app``."""
    state = getattr(app.state, "api", None)
    if not isinstance(state, ApiState):
        raise RuntimeError("this FastAPI app was not made by interest_stream.api.create_app")
    return state


def setting(settings: Settings, name: str, default: T) -> T:
    """A setting that may not exist yet in :class:`Settings` (asked of the coordinator)."""
    value = getattr(settings, name, None)
    return default if value is None else value


def require_items(state: ApiState) -> ItemIndex:
    """The item index, or a 503 ``model_not_loaded`` answer."""
    if state.items is None:
        raise ApiError(
            503,
            "model_not_loaded",
            "no model checkpoint is loaded; start the API with INTEREST_MODEL_DIR set",
        )
    return state.items
