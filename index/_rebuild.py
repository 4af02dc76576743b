"""When a vector set's structure is rebuilt: inline, or in a daemon thread, or held.

:class:`Rebuilds` calls ``maybe_rebuild()`` on every vector set after writes. Held
(e.g. while a consumer catches up) it only remembers that a rebuild is due and
runs it on release; with ``background=True`` the rebuilds run in one daemon thread
that looks again before it exits, so writes never wait for a k-means run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from interest_stream.index.base import VectorIndex

__all__ = ["Rebuilds"]

logger = logging.getLogger(__name__)


class Rebuilds:
    """Runs ``maybe_rebuild()`` of the vector sets ``sets()`` returns, as configured."""

    def __init__(self, sets: Callable[[], Iterable[VectorIndex]], *, background: bool) -> None:
        """Rebuild the sets returned by ``sets`` (inline, or in a thread with ``background``)."""
        self._sets = sets
        self.background = background
        self._thread: threading.Thread | None = None
        self._again = False
        self._held = False
        self._lock = threading.Lock()

    def request(self) -> None:
        """Let each vector set move to the structure its size calls for."""
        if not self.background:
            with self._lock:
                if self._held:
                    self._again = True
                    return
                self._again = False
            for vi in list(self._sets()):
                vi.maybe_rebuild()
            return
        with self._lock:
            self._again = True
            if self._held or self._thread is not None:
                return  # the running thread will look again before it exits
            t = threading.Thread(target=self._loop, name="user-index-rebuild", daemon=True)
            self._thread = t
        t.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False
            for vi in list(self._sets()):
                try:
                    vi.maybe_rebuild()
                except Exception:  # the old structure keeps serving; retried on next write
                    logger.exception("background rebuild of the user index failed")

    def hold(self, hold: bool) -> None:
        """Hold rebuilds (``True``); releasing runs those the writes called for."""
        with self._lock:
            self._held = hold
            due = not hold and self._again
        if due:
            self.request()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild in progress; True when none is running."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True
