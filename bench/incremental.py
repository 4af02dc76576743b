"""Per-update model cost of the long-term vector: full re-encode vs incremental extension.

For users who just gained one event, times (and counts the FLOPs of) what the worker's
encoder does per refreshed user: ``encode_long`` of the whole history (before issue #14)
against ``encode_long_states`` extending the state of the history without its newest
event (after), in flush-sized batches, A and B alternating, many repetitions; the short
encode of the same users is timed beside it for scale. Histories are cut from the shared
Taobao file at random points with the worker's rules (latest <= ``long_max_len`` events;
the ``first`` case is a user's very first event). Run pinned to one core::

    taskset -c 1 .venv/bin/python -m bench.incremental --model /tmp/models/taobao-rv128
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from interest_stream.core.events import Interaction

__all__ = ["bench_incremental", "real_histories"]


def real_histories(n: int, cap: int, seed: int = 0) -> list[list[Interaction]]:
    """``n`` histories of real Taobao users cut at random points (latest <= ``cap``)."""
    from interest_stream.core.eventfile import read_events, shared_data_dir

    df = read_events(shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz")
    df = df.sort_values(["user_id", "ts"], kind="stable")
    users = [g for _, g in df.groupby("user_id", sort=False) if len(g) >= 2]
    rng = np.random.default_rng(seed)
    out: list[list[Interaction]] = []
    for k in rng.integers(0, len(users), size=n):
        g = users[int(k)]
        end = int(rng.integers(2, len(g) + 1))
        rows = g.iloc[max(0, end - cap) : end]
        out.append(
            [
                Interaction(str(i), str(t), int(s))
                for i, t, s in zip(rows["item_id"], rows["event_type"], rows["ts"], strict=True)
            ]
        )
    return out


def _flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _summary(per_user_us: Sequence[float]) -> dict[str, float]:
    q = np.percentile(per_user_us, [10, 50, 90])
    return {"p10_us": round(q[0], 1), "median_us": round(q[1], 1), "p90_us": round(q[2], 1)}


def bench_incremental(
    model_dir: str, *, users: int = 1024, batch: int = 128, reps: int = 30, seed: int = 0
) -> dict[str, Any]:
    """Per-user cost (µs, FLOPs) of a long update after one event: full vs incremental."""
    import torch

    from interest_stream.models import InterestModel

    torch.set_num_threads(1)
    model = InterestModel.load(model_dir, device="cpu")
    cap = model.encoder.cfg.long_max_len
    hist = real_histories(users, cap, seed)
    cases = {"returning": hist, "first": [h[-1:] for h in hist]}
    mean_len = round(float(np.mean([len(h) for h in hist])), 1)
    result: dict[str, Any] = {"model": model.model_version, "batch": batch, "reps": reps}
    result["mean_history"] = mean_len
    for name, hs in cases.items():
        # the state each user had before its newest event (none for a first event)
        before = [h[:-1] for h in hs]
        states = [None] * len(hs)
        rows = [i for i, h in enumerate(before) if h]
        _, got = model.encode_long_states([before[i] for i in rows], [None] * len(rows))
        for i, st in zip(rows, got, strict=True):
            states[i] = st
        chunks = [(hs[i : i + batch], states[i : i + batch]) for i in range(0, len(hs), batch)]
        calls: dict[str, Callable[[list[list[Interaction]], list[Any]], Any]] = {
            "full": lambda h, _s: model.encode_long(h),
            "incremental": lambda h, s: model.encode_long_states(h, s),
            "short (for scale)": lambda h, _s: model.encode_short(
                [model.short_window(x) for x in h]
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(reps):
            for key, fn in calls.items():  # alternating A/B within every repetition
                for h, s in chunks:
                    t0 = time.perf_counter()
                    fn(h, s)
                    times[key].append((time.perf_counter() - t0) * 1e6 / len(h))
        h0, s0 = chunks[0]
        result[name] = {}
        for key, v in times.items():
            fn = calls[key]
            flops = _flops(lambda fn=fn, h=h0, st=s0: fn(h, st)) // len(h0)  # type: ignore[misc]
            result[name][key] = {**_summary(v), "flops_per_user": flops}
        full, inc = result[name]["full"], result[name]["incremental"]
        result[name]["speedup_median"] = round(full["median_us"] / inc["median_us"], 2)
        result[name]["flops_ratio"] = round(
            full["flops_per_user"] / max(1, inc["flops_per_user"]), 1
        )
    result["load_avg"] = os.getloadavg()
    result["affinity"] = sorted(os.sched_getaffinity(0))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.incremental --model DIR``: print the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args(argv)
    res = bench_incremental(a.model, users=a.users, batch=a.batch, reps=a.reps)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
