"""The worker's side of items born after the checkpoint: estimate, then publish.

:class:`NewItemPublisher` feeds the users' touched windows to a
:class:`~interest_stream.core.new_items.NewItemEstimator` over the checkpoint's published
item vectors (read torch-free from the checkpoint folder) and, at most every
``interval_s``, publishes the items whose evidence changed to the compacted item-vectors
topic (:func:`~interest_stream.streams.topics.item_vectors_topic`, key = item id, value =
:class:`~interest_stream.core.new_items.ItemVectorRecord`). A new checkpoint re-averages the
evidence over its vectors and re-publishes every item it still does not know. The state is
in memory: after a restart it grows again from new traffic (the topic keeps the last
published vectors meanwhile). After each publication the items' estimated input embeddings
go to ``on_inputs`` (the worker's encoder uses them instead of the OOV row).
Design: docs/DESIGN.md ("Items born after the checkpoint").
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interest_stream.core.checkpoint import load_item_meta, load_item_vectors
from interest_stream.core.events import EVENT_TYPES
from interest_stream.core.new_items import ItemVectorRecord, NewItemEstimator, NewItemParams
from interest_stream.streams.window import BehaviorWindow

__all__ = ["NewItemPublisher"]

log = logging.getLogger(__name__)

PublishItems = Callable[[Sequence[tuple[bytes, bytes | None]]], Awaitable[None]]
FeedInputs = Callable[[Sequence[str], Any], Awaitable[None]]
KnownInputs = Callable[[], tuple[Sequence[str], np.ndarray]]


@dataclass(frozen=True)
class _Loaded:
    """A checkpoint folder as the estimator needs it."""

    folder: Path
    version: str
    ids: list[str]
    vecs: np.ndarray
    inputs: np.ndarray | None
    categories: dict[str, str]
    codes: tuple[int, int] | None


def _categories(meta: Mapping[str, object]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item, m in meta.items():
        cat = m.get("category") if isinstance(m, Mapping) else m
        if cat is not None:
            out[str(item)] = str(cat)
    return out


class NewItemPublisher:
    """Co-occurrence vectors of new items from the worker's windows, published live.

    Args:
        model_dir: The checkpoint folder the worker encodes with.
        publish: Coroutine producing ``(key, value)`` records to the item-vectors topic.
        params: The estimator's knobs.
        interval_s: Least seconds between two publications.
        max_users: Bound of the per-user "seen in this process" marks (LRU): a user's
            first window after a start (or after the mark fell out) is counted whole.
        on_inputs: Called after each publication with the published items and their
            estimated input embeddings (the worker's encoder takes them as input).
        known_inputs: Returns the current checkpoint's items and their input embeddings
            (asked at the start and after each new checkpoint); without it no input
            embeddings are estimated.
    """

    def __init__(
        self,
        model_dir: Path,
        publish: PublishItems,
        params: NewItemParams | None = None,
        interval_s: float = 5.0,
        max_users: int = 1_000_000,
        on_inputs: FeedInputs | None = None,
        known_inputs: KnownInputs | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.on_inputs = on_inputs
        self._known_inputs = known_inputs
        self._publish = publish
        self.interval_s = interval_s
        self._max_users = max_users
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dirty: set[str] = set()
        self._last = 0.0
        self.published = 0
        self._tried = ""
        ids, vecs, cfg = load_item_vectors(self.model_dir)
        self.model_version = str(cfg.get("model_version"))
        self.estimator = NewItemEstimator(
            ids, vecs, self._inputs(ids), params, _categories(load_item_meta(self.model_dir)),
            _codes(cfg),
        )  # fmt: skip

    def _inputs(self, ids: Sequence[str]) -> np.ndarray | None:
        """The known items' input embeddings in the row order of ``ids`` (None: unknown)."""
        if self._known_inputs is None:
            return None
        try:
            names, rows = self._known_inputs()
        except Exception:  # the vectors are still published; only the encoder input is off
            log.exception("new items: no input embeddings of the checkpoint's items")
            return None
        at = {item: r for r, item in enumerate(names)}
        out = np.zeros((len(ids), rows.shape[1]), np.float32)
        hit = [(k, at[i]) for k, i in enumerate(ids) if i in at]
        if hit:
            mine, theirs = zip(*hit, strict=True)
            out[list(mine)] = rows[list(theirs)]
        return out

    def observe(self, windows: Mapping[str, BehaviorWindow]) -> None:
        """Count the pairs of the events each window gained in the worker's batch.

        The new events are the window's ``fresh`` record (the worker records each batch):
        an event that arrived after later-dated ones (another topic, a late producer) is
        found where it sits in the time-ordered history and paired with its neighbours
        on both sides, so what is counted does not depend on the order of arrival. A user
        not seen before in this process has the whole window counted (the estimator's
        state is in memory: this rebuilds it after a restart).
        """
        span = self.estimator.params.window
        for user, w in windows.items():
            first = user not in self._seen
            self._seen[user] = None
            self._seen.move_to_end(user)
            if len(self._seen) > self._max_users:
                self._seen.popitem(last=False)
            new = list(range(len(w.items))) if first else _positions(w)
            if not new:
                continue
            # only the new events and `window` events around them can pair
            start, end = max(0, new[0] - span), min(len(w.items), new[-1] + span + 1)
            tail = [(w.items[k], _type_name(w.types[k]), w.times[k]) for k in range(start, end)]
            self._dirty |= self.estimator.observe(tail, [p - start for p in new], later=True)

    def follow(self, model_version: str) -> bool:
        """Reload the folder once when the worker's model became ``model_version``."""
        if model_version in (self.model_version, self._tried):
            return False
        self._tried = model_version
        return self.reload()

    async def follow_async(self, model_version: str) -> bool:
        """:meth:`follow` with the reading (files, the encoder's input rows) in a thread.

        The event loop never waits for the checkpoint's files or the encoder child's
        round trip; only the swap of the estimator's model runs on it.
        """
        if model_version in (self.model_version, self._tried):
            return False
        self._tried = model_version
        return self._apply(await asyncio.to_thread(self._load, self.model_dir))

    def reload(self, model_dir: Path | None = None) -> bool:
        """Follow a new checkpoint in ``model_dir``; True if the version changed."""
        return self._apply(self._load(Path(model_dir or self.model_dir)))

    def _load(self, folder: Path) -> _Loaded | None:
        """Read a checkpoint folder (``None``: the version is the one followed already)."""
        ids, vecs, cfg = load_item_vectors(folder)
        version = str(cfg.get("model_version"))
        if version == self.model_version:
            return None
        meta = _categories(load_item_meta(folder))
        return _Loaded(folder, version, ids, vecs, self._inputs(ids), meta, _codes(cfg))

    def _apply(self, got: _Loaded | None) -> bool:
        """Swap the estimator onto a loaded checkpoint; True if the version changed."""
        if got is None or got.version == self.model_version:
            return False
        self.model_dir, self.model_version = got.folder, got.version
        est = self.estimator
        est.set_model(got.ids, got.vecs, got.inputs, got.categories, got.codes)
        self._dirty = set(est.evidence) | set(est.category)
        self._last = 0.0
        log.info("new items: model %s; %d items to re-publish", got.version, len(self._dirty))
        return True

    async def maybe_publish(self, force: bool = False) -> int:
        """Publish the items whose evidence changed (at most every ``interval_s``)."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last < self.interval_s):
            return 0
        self._last = now
        items, self._dirty = self._dirty, set()
        got = self.estimator.vectors(sorted(items))
        version = int(time.time() * 1000)
        cats = self.estimator.category
        out: list[tuple[bytes, bytes | None]] = []
        for k, item in enumerate(got.ids):
            rec = ItemVectorRecord(
                item, self.model_version, version, got.out[k], float(got.weight[k]), cats.get(item)
            )
            out.append((item.encode(), rec.to_json()))
        try:
            await self._publish(out)
        except BaseException:
            self._dirty |= items
            raise
        self.published += len(out)
        if self.on_inputs is not None and got.inp.shape[1] > 0:
            await self.on_inputs(got.ids, got.inp)
        return len(out)


def _positions(w: BehaviorWindow) -> list[int]:
    """Positions in ``w``'s history of its ``fresh`` events, ascending (those already
    dropped from the bounded history are left out)."""
    taken: set[int] = set()
    for ts, item, code in w.fresh or ():
        lo, hi = bisect_left(w.times, ts), bisect_right(w.times, ts)
        for p in range(hi - 1, lo - 1, -1):  # ties: the newest insert is the rightmost
            if p not in taken and w.items[p] == item and w.types[p] == code:
                taken.add(p)
                break
    return sorted(taken)


def _codes(cfg: Mapping[str, object]) -> tuple[int, int] | None:
    enc = cfg.get("encoder")
    if not isinstance(enc, Mapping):
        return None
    rd = int(enc.get("revisit_dim", 0) or 0)
    return (int(enc.get("dim", 0) or 0), rd) if rd else None


def _type_name(code: int) -> str:
    return EVENT_TYPES[code] if 0 <= code < len(EVENT_TYPES) else "view"
