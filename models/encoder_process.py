"""The model in a child process, so encoding does not compete for the worker's GIL.

:class:`ProcessEncoder` satisfies ``interest_stream.streams.reencode.Encoder`` and
runs :class:`interest_stream.models.InterestModel` in one spawned child process:
histories go over a pipe (pickled ``Interaction`` tuples), float32 ``[B, dim]``
vectors come back. The parent never imports torch. A child that dies is replaced
on the next call (the call is retried once). Used by default on CPU
(``INTEREST_ENCODE_PROCESS=auto``); see docs/ARCHITECTURE.md for why.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from interest_stream.core.checkpoint import (
    CheckpointError,
    checkpoint_version,
    read_config,
    short_window_spec,
)
from interest_stream.core.errors import InterestStreamError
from interest_stream.core.events import Interaction
from interest_stream.core.new_items import ExtraItemInputs

__all__ = ["EncoderProcessError", "ProcessEncoder"]

log = logging.getLogger(__name__)

#: Seconds a child may take to import torch and load the checkpoint.
START_TIMEOUT_S = 300.0

_MODEL: Any = None
_EXTRAS = ExtraItemInputs()  # new items' input rows, the child's copy


class EncoderProcessError(InterestStreamError):
    """The encoder child process could not start or load the checkpoint."""


def _child_init(model_dir: str, device: str, threads: int, nice: int = 0) -> None:
    """Runs once in the child: niceness, threads, then the checkpoint."""
    global _MODEL
    if nice > 0:
        os.nice(nice)
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from interest_stream.models import InterestModel

    _MODEL = InterestModel.load(model_dir, device=device)


def _child_version() -> tuple[str, int]:
    return str(_MODEL.model_version), int(_MODEL.dim)


def _child_encode(histories: list[list[Interaction]], long: bool) -> np.ndarray:
    out: np.ndarray = (_MODEL.encode_long if long else _MODEL.encode_short)(histories)
    return out


def _child_extend(histories: list[list[Interaction]], states: list[Any]) -> tuple[Any, Any]:
    out: tuple[Any, Any] = _MODEL.encode_long_states(histories, states)
    return out


def _child_variants(
    short: list[Interaction],
    short_drops: list[list[int]],
    long: list[Interaction],
    long_drops: list[list[int]],
) -> tuple[np.ndarray, np.ndarray]:
    out: tuple[np.ndarray, np.ndarray] = _MODEL.encode_variants(
        short, short_drops, long, long_drops
    )
    return out


def _child_update_extras(ids: list[str], inputs: np.ndarray) -> int:
    _EXTRAS.merge(ids, inputs)
    _EXTRAS.apply(_MODEL)
    return len(_EXTRAS)


def _child_known_inputs() -> tuple[list[str], np.ndarray]:
    from interest_stream.models.extra_items import known_inputs

    return known_inputs(_MODEL)


def _child_variants_many(jobs: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    from interest_stream.models.occlusion import encode_variants_many

    return encode_variants_many(_MODEL, jobs)


class ProcessEncoder:
    """An :class:`~streams.reencode.Encoder` whose model lives in a child process.

    Args:
        model_dir: Checkpoint folder (``config.json`` names its version and dim).
        device: ``auto``, ``cpu`` or ``cuda`` (chosen in the child).
        threads: torch CPU threads of the child (0 = torch's default).
        nice: Niceness added to the child (0 = none): a lower CPU priority than the
            processes that serve queries, e.g. for the explanations' encoder.

    Raises:
        EncoderProcessError: The child did not start or could not load the checkpoint.
    """

    def __init__(
        self, model_dir: Path | str, device: str = "auto", threads: int = 1, nice: int = 0
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.threads = threads
        self.nice = nice
        self._pool: ProcessPoolExecutor | None = None
        self._extras = ExtraItemInputs()  # re-sent to a replaced child
        try:  # torch-free: the checkpoint's short window, for the worker to cut windows with
            config = read_config(self.model_dir)
        except CheckpointError as exc:
            raise EncoderProcessError(
                f"the encoder process could not load {self.model_dir}: {exc}"
            ) from exc
        #: ``(max events, minutes)`` of the checkpoint's short window.
        self.short_window_spec: tuple[int, float] = short_window_spec(config)
        self.model_version, self.dim = self._start()

    def _start(self) -> tuple[str, int]:
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=ctx,
            initializer=_child_init,
            initargs=(str(self.model_dir), self.device, self.threads, self.nice),
        )
        try:
            version, dim = self._pool.submit(_child_version).result(timeout=START_TIMEOUT_S)
        except Exception as exc:
            self.close()
            raise EncoderProcessError(
                f"the encoder process could not load {self.model_dir}: {exc!r}"
            ) from exc
        if len(self._extras):
            self._pool.submit(_child_update_extras, *self._extras.arrays(dim)).result()
        expected = checkpoint_version(self.model_dir)
        if expected is not None and expected != version:  # pragma: no cover - a race
            log.warning("checkpoint changed while loading: %s != %s", version, expected)
        log.info("encoder process up: model %s (dim %d) on %s", version, dim, self.device)
        return version, dim

    def _call(self, histories: Sequence[Sequence[Interaction]], long: bool) -> np.ndarray:
        return np.asarray(self._submit(_child_encode, [list(h) for h in histories], long))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the child; a dead child is replaced and the call retried once."""
        for attempt in (1, 2):
            pool = self._pool
            if pool is None:
                raise EncoderProcessError("the encoder process is closed")
            try:
                return pool.submit(fn, *args).result()
            except BrokenProcessPool:
                if attempt == 2:
                    raise
                log.error("the encoder process died; starting a new one")
                self.close()
                self._start()
        raise AssertionError("unreachable")  # pragma: no cover

    def encode_long_states(
        self, histories: Sequence[Sequence[Interaction]], states: Sequence[Any]
    ) -> tuple[np.ndarray, list[Any]]:
        """:meth:`InterestModel.encode_long_states` in the child (states travel pickled)."""
        if not histories:
            return np.empty((0, self.dim), dtype=np.float32), []
        vectors, new = self._submit(_child_extend, [list(h) for h in histories], list(states))
        return np.asarray(vectors), list(new)

    def encode_variants(
        self,
        short: Sequence[Interaction],
        short_drops: Sequence[Sequence[int]],
        long: Sequence[Interaction],
        long_drops: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`InterestModel.encode_variants` in the child: one window and index
        lists cross the pipe, not one copy of the window per variant."""
        s, lo = self._submit(
            _child_variants, list(short), [list(d) for d in short_drops], list(long),
            [list(d) for d in long_drops],
        )  # fmt: skip
        return np.asarray(s), np.asarray(lo)

    def encode_variants_many(self, jobs: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Several users' :meth:`encode_variants` in one call of the child
        (:func:`interest_stream.models.occlusion.encode_variants_many`)."""
        if not jobs:
            return []
        out: list[tuple[np.ndarray, np.ndarray]] = self._submit(_child_variants_many, list(jobs))
        return out

    def submit_variants_many(self, jobs: Sequence[Any]) -> Future[Any]:
        """:meth:`encode_variants_many` without waiting: the child's future, for an event
        loop to await (``asyncio.wrap_future``) without a thread of its own in between.

        Raises:
            EncoderProcessError: The encoder process is closed. A dead child surfaces as
                ``BrokenProcessPool`` from the future (:meth:`encode_variants_many` replaces it).
        """
        pool = self._pool
        if pool is None:
            raise EncoderProcessError("the encoder process is closed")
        return pool.submit(_child_variants_many, list(jobs))

    def known_item_inputs(self) -> tuple[list[str], np.ndarray]:
        """The checkpoint's items and their input embeddings (from the child)."""
        ids, inputs = self._submit(_child_known_inputs)
        return list(ids), np.asarray(inputs)

    def update_extra_items(self, ids: Sequence[str], inputs: Any) -> int:
        """New items as encoder input in the child (merged; a replaced child gets them all).

        Returns:
            How many extra items the child now encodes from their own rows.
        """
        self._extras.merge(ids, inputs)
        return int(self._submit(_child_update_extras, list(ids), np.asarray(inputs)))

    def encode_short(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        """Short-term vectors, float32 ``[B, dim]`` (computed in the child)."""
        if not histories:
            return np.empty((0, self.dim), dtype=np.float32)
        return self._call(histories, long=False)

    def encode_long(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        """Long-term vectors, float32 ``[B, dim]`` (computed in the child)."""
        if not histories:
            return np.empty((0, self.dim), dtype=np.float32)
        return self._call(histories, long=True)

    def close(self) -> None:
        """Stop the child process."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
