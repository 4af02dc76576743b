"""Every use of faust-streaming / aiokafka internals, fenced in one module.

The worker depends on six private details of the tested library versions
(:data:`TESTED_VERSIONS`); each has a function here and a test in
``tests/unit/test_faust_compat.py`` that fails when the library changes:

* :func:`install_fetch_wait_patch` -- the consumer's ``fetch_max_wait_ms``
  (Faust hard-codes 1,500 ms on the aiokafka consumer it creates);
* :func:`own_commits` -- Faust commits exactly the offsets the worker says are
  durable (its ``Consumer._new_offset`` is replaced; its own ack bookkeeping is
  dropped);
* :func:`consider_for_commit` -- partitions Faust's commit pass looks at (it
  only looks at partitions in its ack lists, emptied on every rebalance);
* :func:`install_recovery_seek_guard` -- table recovery never seeks below 0;
* :func:`committed_offset` -- the committed offset Faust sought a partition to;
* :func:`current_event` -- the "current event" that routes a table read to the
  store of one partition.

:func:`check_versions` refuses other versions unless
``INTEREST_ALLOW_UNTESTED_FAUST=true``. Why the worker owns its commits is in
docs/ARCHITECTURE.md ("Exactly-once state").
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from faust.streams import _current_event  # Faust has no public setter for it
from faust.types import TP, EventT

from interest_stream.core.errors import ConfigError

__all__ = [
    "ALLOW_UNTESTED_ENV",
    "TESTED_VERSIONS",
    "UntestedLibraryError",
    "check_versions",
    "committed_offset",
    "consider_for_commit",
    "current_event",
    "install_fetch_wait_patch",
    "install_recovery_seek_guard",
    "own_commits",
]

log = logging.getLogger(__name__)

#: Library versions whose internals this module was written and tested against.
TESTED_VERSIONS: dict[str, str] = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
#: The setting that lets a worker start on other versions anyway.
ALLOW_UNTESTED_ENV = "INTEREST_ALLOW_UNTESTED_FAUST"
#: App attribute holding the wanted ``fetch_max_wait_ms`` (read by the patch).
FETCH_WAIT_ATTR = "interest_fetch_max_wait_ms"
_OWNED = "_interest_owned_commits"


class UntestedLibraryError(ConfigError):
    """faust-streaming or aiokafka is not a version the worker's patches were tested with."""


def installed_versions() -> dict[str, str | None]:
    """Installed versions of the libraries in :data:`TESTED_VERSIONS` (``None``: missing)."""
    found: dict[str, str | None] = {}
    for name in TESTED_VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def check_versions(allow_untested: bool = False) -> None:
    """Refuse to run on library versions the patches here were not tested with.

    Args:
        allow_untested: Only log a warning (``INTEREST_ALLOW_UNTESTED_FAUST``).

    Raises:
        UntestedLibraryError: A version differs and ``allow_untested`` is false.
    """
    have = installed_versions()
    wrong = {n: v for n, v in have.items() if v != TESTED_VERSIONS[n]}
    if not wrong:
        return
    detail = ", ".join(
        f"{n} {v or 'missing'} (tested: {TESTED_VERSIONS[n]})" for n, v in wrong.items()
    )
    if allow_untested:
        log.warning("running on untested library versions: %s", detail)
        return
    raise UntestedLibraryError(
        f"the worker patches private internals of {detail}; install the tested versions "
        f"(constraints.txt) or set {ALLOW_UNTESTED_ENV}=true to run anyway at your own risk"
    )


def install_fetch_wait_patch() -> None:
    """Let an app choose its consumer's ``fetch_max_wait_ms`` (Faust hard-codes 1,500).

    The wanted value is read from the app's :data:`FETCH_WAIT_ATTR` attribute when
    Faust creates its aiokafka consumer; apps without it keep Faust's value.
    Why it matters: docs/ARCHITECTURE.md ("Fetch wait"). Idempotent.
    """
    from faust.transport.drivers import aiokafka as faust_aiokafka

    cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(cls, "_interest_fetch_wait_patched", False):
        return
    original = cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait_ms = getattr(self.app, FETCH_WAIT_ATTR, None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # noqa: SLF001 - read by start()
        return consumer

    cls._create_worker_consumer = create  # type: ignore[method-assign]
    cls._interest_fetch_wait_patched = True  # type: ignore[attr-defined]


def own_commits(consumer: Any, durable: Callable[[TP], int | None]) -> None:
    """Make Faust commit, per source partition, exactly ``durable(tp)``.

    ``durable(tp)`` is the next offset of ``tp`` whose effect is not yet
    acknowledged in the worker's changelog (``None``: nothing to commit). Faust
    still decides *when* to commit (interval, rebalance, shutdown) and skips
    offsets at or below the committed one; *what* it commits no longer comes
    from its acked-offset lists, which are emptied on every call so they do not
    grow. Installed once per consumer instance.
    """
    if getattr(consumer, _OWNED, False):
        return

    def new_offset(tp: TP) -> int | None:
        acked = consumer._acked.get(tp)  # noqa: SLF001 - see docstring
        if acked:
            acked.clear()
        index = consumer._acked_index.get(tp)  # noqa: SLF001 - see docstring
        if index:
            index.clear()
        gaps = consumer._gap.get(tp)  # noqa: SLF001 - see docstring
        if gaps:
            gaps.clear()
        return durable(tp)

    consumer._new_offset = new_offset  # noqa: SLF001 - see docstring
    setattr(consumer, _OWNED, True)


def consider_for_commit(consumer: Any, tps: Iterable[TP]) -> None:
    """Make Faust's commit pass consider ``tps`` before any message of theirs is acked.

    Faust only commits partitions found in its per-partition ack lists, which it
    empties on every rebalance; a partition whose messages were all processed
    before the rebalance would otherwise never get its durable position committed.
    """
    for tp in tps:
        consumer._acked.setdefault(tp, [])  # noqa: SLF001 - see docstring


def install_recovery_seek_guard() -> None:
    """Never let table recovery seek a changelog partition to a negative offset.

    faust-streaming 0.15.3 ``Recovery._seek_offsets`` maps -1 to 0 but passes other
    ``None`` and other negative values on (a partition whose offsets the broker did
    not give during a rebalance), and aiokafka's ``seek`` then raises ``ValueError``
    -- the worker crashed (seen under CPU pressure with two workers).
    Seeking to 0 instead reads the changelog from its start, which is always safe.
    Idempotent.
    """
    from faust.tables.recovery import Recovery

    cls = Recovery
    if getattr(cls, "_interest_seek_guarded", False):
        return
    original = cls._seek_offsets

    async def seek_offsets(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        for tp in tps:
            if offsets[tp] is None or offsets[tp] < -1:
                log.warning("recovery: %s would seek to %s; reading from 0", tp, offsets[tp])
                offsets[tp] = -1
        await original(self, consumer, tps, offsets, title)

    cls._seek_offsets = seek_offsets  # type: ignore[method-assign]
    cls._interest_seek_guarded = True  # type: ignore[attr-defined]


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The committed offset Faust sought ``tp`` to on assignment (``None``: none)."""
    value = consumer._committed_offset.get(tp)  # noqa: SLF001 - see module docstring
    return int(value) if value is not None else None


@contextmanager
def current_event(event: EventT[Any] | None) -> Iterator[None]:
    """Route table reads in the block to the partition of ``event`` (all partitions: None)."""
    token = _current_event.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        _current_event.reset(token)
