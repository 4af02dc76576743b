"""Encoder throughput: ``interest-stream bench encoder`` = :func:`bench_encoder`.

Measures users encoded per second through the public
:meth:`~models.model.InterestModel.encode_short` / ``encode_long`` calls at
several batch sizes, next to a plain per-user loop (one call per user) in the
same run, for two kinds of input:

* ``full`` — worst case: every short window has the cap of 50 events, every
  long history 200 events;
* ``real`` — windows cut from the shared Taobao ``user_histories`` at random
  points with the worker's rules (short: latest <= 50 events within 30 min;
  long: latest <= 200), i.e. the length mix a worker sees.

Without a checkpoint the default architecture is built untrained with a
vocabulary of the Taobao items (speed does not depend on the weights).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interest_stream.core.events import EVENT_TYPES, Interaction
from interest_stream.models.features import short_window

__all__ = ["bench_encoder", "benchmark_histories"]

log = logging.getLogger(__name__)


def benchmark_histories(
    n_users: int,
    item_ids: Sequence[str],
    seed: int = 0,
    data_file: str | os.PathLike[str] | None = None,
) -> dict[str, list[list[Interaction]]]:
    """Benchmark inputs: ``short_full``, ``long_full``, ``short_real``, ``long_real``.

    Args:
        n_users: Histories per kind.
        item_ids: Item ids to draw the synthetic (``full``) histories from.
        seed: Random seed.
        data_file: Event file for the ``real`` kinds (default: the shared Taobao
            ``user_histories``; skipped when missing).

    Returns:
        Lists of ``n_users`` histories (oldest first) per kind.
    """
    rng = np.random.default_rng(seed)
    t0 = 1_512_000_000_000

    def synth(length: int, span_ms: int) -> list[list[Interaction]]:
        out = []
        for _ in range(n_users):
            items = rng.integers(0, len(item_ids), size=length)
            types = rng.integers(0, len(EVENT_TYPES), size=length)
            ts = np.sort(rng.integers(t0, t0 + span_ms, size=length))
            out.append(
                [
                    Interaction(item_ids[i], EVENT_TYPES[t], int(s))
                    for i, t, s in zip(items, types, ts, strict=True)
                ]
            )
        return out

    kinds = {"short_full": synth(50, 30 * 60_000), "long_full": synth(200, 9 * 86_400_000)}
    path = Path(data_file) if data_file else None
    if path is None:
        from interest_stream.core.eventfile import shared_data_dir

        path = shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
    if path.exists():
        from interest_stream.core.eventfile import read_events

        df = read_events(path)
        groups = [g for _, g in df.groupby("user_id", sort=True)]
        hists = [
            [
                Interaction(str(i), str(t), int(s))
                for i, t, s in zip(g["item_id"], g["event_type"], g["ts"], strict=True)
            ]
            for g in groups
        ]
        shorts, longs = [], []
        for _ in range(n_users):
            h = hists[int(rng.integers(0, len(hists)))]
            end = int(rng.integers(1, len(h) + 1))
            shorts.append(short_window(h[:end], 50, 30.0))
            longs.append(h[max(0, end - 200) : end])
        kinds["short_real"] = shorts
        kinds["long_real"] = longs
    return kinds


def _rate(fn: Any, histories: Sequence[Sequence[Interaction]], batch: int, repeats: int) -> float:
    """Best users/s over ``repeats`` passes of encoding ``histories`` in batches."""
    best = 0.0
    fn(histories[: min(batch, len(histories))])  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(histories), batch):
            fn(histories[start : start + batch])
        dt = time.perf_counter() - t0
        best = max(best, len(histories) / dt)
    return best


def _loop_rate(fn: Any, histories: Sequence[Sequence[Interaction]], repeats: int) -> float:
    """Best users/s of a plain loop calling the encoder once per user."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for h in histories:
            fn([h])
        best = max(best, len(histories) / (time.perf_counter() - t0))
    return best


def bench_encoder(
    model_dir: str | os.PathLike[str] | None = None,
    batch_sizes: Sequence[int] = (1, 64, 512),
    n_users: int = 2048,
    loop_users: int = 256,
    repeats: int = 3,
    threads: int | None = None,
    device: str | None = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Users encoded per second, short and long path, per batch size and per-user loop.

    Args:
        model_dir: A checkpoint folder, or ``None`` for the default architecture, untrained.
        batch_sizes: Batch sizes to measure.
        n_users: Histories encoded per measurement pass.
        loop_users: Histories of the per-user loop pass (it is slow).
        repeats: Passes per figure (the best is reported).
        threads: ``torch.set_num_threads`` for the run (``None`` = leave as is).
        device: Torch device.
        seed: Seed of the synthetic histories and the untrained model.

    Returns:
        ``{"device", "threads", "model", "results": {kind: {"batch": {size: users/s},
        "per_user_loop": users/s, "mean_events": float}}, "loadavg": [...]}``.
    """
    import torch

    from interest_stream.models.model import InterestModel, select_device

    if threads is not None:
        torch.set_num_threads(threads)
    if model_dir is not None:
        model = InterestModel.load(model_dir, device=device)
        label = f"{model_dir} ({model.model_version})"
    else:
        model = _untrained_model(seed, device)
        label = "default architecture, untrained (speed does not depend on weights)"
    hist = benchmark_histories(n_users, model.item_ids, seed)
    results: dict[str, Any] = {}
    for kind, hs in hist.items():
        fn = model.encode_long if kind.startswith("long") else model.encode_short
        per_batch = {}
        for b in batch_sizes:
            n = len(hs) if b > 1 else min(len(hs), loop_users)
            per_batch[str(b)] = _rate(fn, hs[:n], b, repeats)
        loop = _loop_rate(fn, hs[:loop_users], repeats)
        results[kind] = {
            "batch": per_batch,
            "per_user_loop": loop,
            "mean_events": float(np.mean([len(h) for h in hs])),
        }
        log.info(
            "%s: %s users/s; per-user loop %.0f users/s",
            kind,
            {k: round(v) for k, v in per_batch.items()},
            loop,
        )
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "device": str(select_device(device)),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "model": label,
        "n_users": n_users,
        "loop_users": loop_users,
        "repeats": repeats,
        "results": results,
        "loadavg": load,
    }


def _untrained_model(seed: int, device: str | None) -> Any:
    import torch

    from interest_stream.models.config import EncoderConfig
    from interest_stream.models.encoder import InterestEncoder
    from interest_stream.models.model import InterestModel, select_device

    n_items = 50_000
    item_ids = [str(1_000_000 + i) for i in range(n_items)]
    try:
        from interest_stream.core.eventfile import read_events, shared_data_dir

        path = shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
        if path.exists():
            item_ids = sorted(read_events(path)["item_id"].astype(str).unique().tolist())
    except Exception:
        log.debug("benchmark: using a synthetic vocabulary", exc_info=True)
    torch.manual_seed(seed)
    enc = InterestEncoder(EncoderConfig(), n_items=len(item_ids), n_categories=3000)
    cfg = {"model_version": "bench-untrained", "train": {}}
    return InterestModel(enc, item_ids, cfg, select_device(device))
