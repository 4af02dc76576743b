"""The faiss module, loaded on first use, and its process-wide settings (threads, GPUs)."""

from __future__ import annotations

import threading
from typing import Any

from interest_stream.index.errors import MissingIndexDependency

__all__ = ["apply_threads", "faiss_available", "get_threads", "gpu_count", "load_faiss",
           "set_threads"]  # fmt: skip


def load_faiss() -> Any:
    """The faiss module (imported on first use: ``index`` imports without it)."""
    try:
        import faiss  # lazy on purpose: heavy, and the numpy backend needs none of it
    except ImportError as exc:  # pragma: no cover - faiss is a core dependency
        raise MissingIndexDependency(
            "the FAISS backend needs faiss: pip install 'interest-stream' (faiss-cpu) "
            "or 'interest-stream[gpu]' (faiss-gpu)"
        ) from exc
    return faiss


def faiss_available() -> bool:
    """Whether faiss can be imported."""
    try:
        load_faiss()
    except MissingIndexDependency:
        return False
    return True


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    try:
        return int(load_faiss().get_num_gpus())
    except (MissingIndexDependency, AttributeError):
        return 0


_threads: int | None = None
_local = threading.local()


def set_threads(n: int | None) -> None:
    """Set the OpenMP threads FAISS uses in this process (``None``: FAISS' default).

    Online serving wants 1: one query or a small upsert batch is too small to
    split, and on a busy machine (2 cores shared with Kafka, the worker and the
    event loop) OpenMP's spinning barriers turn a 0.1 ms search into several ms
    of CPU. Bulk builds (k-means) are faster with more threads on an idle machine.

    OpenMP keeps this number per thread, so every :class:`FaissIndex` call
    applies it to its calling thread (the API's thread pool, the consumer
    thread) before it enters FAISS.
    """
    global _threads
    if n is not None and n < 1:
        raise ValueError(f"FAISS threads must be >= 1, got {n}")
    _threads = None if n is None else int(n)
    apply_threads()


def apply_threads() -> None:
    """Give the calling thread the process-wide FAISS thread count (cheap when set)."""
    want = _threads
    if want is not None and getattr(_local, "threads", None) != want:
        load_faiss().omp_set_num_threads(want)
        _local.threads = want


def get_threads() -> int:
    """The OpenMP threads FAISS uses in the calling thread."""
    apply_threads()
    return int(load_faiss().omp_get_max_threads())
