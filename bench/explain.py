"""Explanation benchmark: faithfulness of occlusion and the latency of ``explain=true``.

Called by ``interest-stream bench explain``.

* **Faithfulness** (in process, no broker): for sampled users of an event file (their
  latest ``long_history`` events), the top-``k`` items of the blend vector are explained
  exactly as the worker does (:mod:`interest_stream.streams.explain`, horizon ``blend``).
  For each (user, item) pair the window is re-encoded without its top-``m`` attributed
  events (single events, largest delta first) and without ``m`` random events of the same
  window, ``m = 0..max_m``: the deletion curves. A pair *passes* when removing the top 3
  lowers the item's score more than removing 3 random events. Reported: the fraction
  that passes with a bootstrap 95% CI over users (pairs of one user stay together), the
  mean curves (as a PNG chart with ``charts``), the seed.
* **Latency** (real broker, ``interest-stream worker`` with the checkpoint and its
  default child-process encoder, ``interest-stream serve`` with ``INTEREST_WORKER_URLS``):
  the event file is replayed and applied, then open-loop phases (``bench.api``'s load
  generator) of plain ``/recommendations?k=10`` alone, then plain and
  ``explain=true`` together, each at ``rate`` requests/s, while events keep arriving at
  ``event_rate`` (so windows change and the worker's variant cache is invalidated).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interest_stream.core.events import Interaction
from interest_stream.core.settings import Settings

__all__ = ["bench_explain", "faithfulness", "latency"]

log = logging.getLogger(__name__)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _histories(events: pd.DataFrame, n_long: int) -> dict[str, list[Interaction]]:
    df = events.sort_values(["user_id", "ts"], kind="stable")
    out: dict[str, list[Interaction]] = {}
    for user, g in df.groupby("user_id", sort=False):
        rows = zip(g["item_id"], g["event_type"], g["ts"], strict=True)
        out[str(user)] = [Interaction(str(i), str(t), int(ts)) for i, t, ts in rows][-n_long:]
    return out


def _cluster_ci(
    per_user: list[list[bool]], rng: np.random.Generator, n_boot: int = 2000
) -> tuple[float, float]:
    """Bootstrap 95% CI of the pass fraction, resampling users (their pairs together)."""
    hits = np.array([sum(p) for p in per_user], dtype=np.float64)
    sizes = np.array([len(p) for p in per_user], dtype=np.float64)
    idx = rng.integers(0, len(per_user), size=(n_boot, len(per_user)))
    fr = hits[idx].sum(1) / sizes[idx].sum(1)
    lo, hi = np.percentile(fr, [2.5, 97.5])
    return float(lo), float(hi)


def faithfulness(
    model_dir: Path,
    events: pd.DataFrame,
    *,
    users: int = 200,
    k: int = 10,
    top_m: int = 3,
    max_m: int = 10,
    min_events: int = 20,
    long_events: int = 50,
    seed: int = 0,
    progress: bool = False,
    exact_events: int | None = -1,
) -> dict[str, Any]:
    """The deletion test and curves (see the module docstring); the variants are
    encoded as the worker's encoder process does (``encode_variants_many`` with
    ``exact_events``; -1: its default), the deletions re-encoded exactly."""
    import torch

    from interest_stream.core.vectors import blend
    from interest_stream.models import InterestModel
    from interest_stream.models.occlusion import EXACT_EVENTS
    from interest_stream.streams.explain import (
        VectorScorer,
        encode_units,
        explain_window,
        occlusion_units,
    )

    torch.set_num_threads(1)
    model = InterestModel.load(model_dir, device="cpu")
    n_long = int(model.encoder.cfg.long_max_len)
    hist = _histories(events, n_long)
    pool = sorted(u for u, h in hist.items() if len(h) >= min_events)
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in rng.choice(len(pool), size=min(users, len(pool)), replace=False)]
    items = model.item_vectors().astype(np.float32)
    w = model.blend_alpha
    exact = EXACT_EVENTS if exact_events == -1 else exact_events
    worker = _WorkerPath(model, exact)
    per_user: list[list[bool]] = []
    top_curve: list[np.ndarray] = []
    rand_curve: list[np.ndarray] = []
    drops_top: list[float] = []
    drops_rand: list[float] = []
    t_explain: list[float] = []
    t0 = time.perf_counter()
    for n_done, user in enumerate(chosen):
        h = hist[user]
        short = model.short_window(h)
        start = len(h) - len(short)
        vec = blend(model.encode_short([short]), model.encode_long([h]), w)[0]
        top_items = np.argsort(-(items @ vec))[:k]
        targets = items[top_items]
        te = time.perf_counter()
        units, _ = occlusion_units(len(h), start, "blend", long_events)
        variants = encode_units(worker, h, start, units, "blend")
        res = explain_window(variants, VectorScorer("blend", w), targets, top=len(units))
        t_explain.append(time.perf_counter() - te)
        # the variants to re-encode: per pair, the top-m and random-m removals, m = 0..max_m
        drops: list[list[int]] = []
        index = {(e[0], e[1], e[2]): i for i, e in enumerate(h)}
        plan = []
        for t in range(len(top_items)):
            ranked = [
                index[(e["item_id"], e["event_type"], e["ts"])]
                for e in res[t]["events"]
                if not e.get("group")
            ]
            perm = [int(i) for i in rng.permutation(len(h))]
            rows_top, rows_rand = [], []
            for m in range(max_m + 1):
                rows_top.append(len(drops))
                drops.append(ranked[:m])
                rows_rand.append(len(drops))
                drops.append(perm[:m])
            plan.append((rows_top, rows_rand))
        short_drops = [[i - start for i in d if i >= start] for d in drops]
        s_vecs, l_vecs = model.encode_variants(short, short_drops, h, drops)
        scores = blend(s_vecs, l_vecs, w).astype(np.float64)  # [V, dim]
        passes = []
        for t, (rows_top, rows_rand) in enumerate(plan):
            col = scores @ targets[t].astype(np.float64)
            st, sr = col[rows_top], col[rows_rand]
            full = st[0]
            passes.append(bool(full - st[top_m] > full - sr[top_m]))
            drops_top.append(float(full - st[top_m]))
            drops_rand.append(float(full - sr[top_m]))
            scale = max(abs(full - res[t]["prior"]), 1e-9)
            top_curve.append((st - full) / scale)
            rand_curve.append((sr - full) / scale)
        per_user.append(passes)
        if progress and (n_done + 1) % 25 == 0:
            _say(progress, f"[explain] faithfulness: {n_done + 1}/{len(chosen)} users "
                 f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    allp = [p for u in per_user for p in u]
    lo, hi = _cluster_ci(per_user, np.random.default_rng(seed + 1))
    tc, rc = np.array(top_curve), np.array(rand_curve)
    return {
        "model": str(model_dir),
        "model_version": model.model_version,
        "users": len(per_user),
        "pairs": len(allp),
        "k": k,
        "top_m": top_m,
        "long_events": long_events,
        "exact_events": exact,
        "seed": seed,
        "pass_fraction": round(float(np.mean(allp)), 4),
        "pass_ci95": [round(lo, 4), round(hi, 4)],
        "mean_drop_top": round(float(np.mean(drops_top)), 4),
        "mean_drop_random": round(float(np.mean(drops_rand)), 4),
        "median_drop_top": round(float(np.median(drops_top)), 4),
        "median_drop_random": round(float(np.median(drops_rand)), 4),
        "curve_m": list(range(max_m + 1)),
        "curve_top_mean": [round(float(x), 4) for x in tc.mean(0)],
        "curve_random_mean": [round(float(x), 4) for x in rc.mean(0)],
        "curve_top_median": [round(float(x), 4) for x in np.median(tc, 0)],
        "curve_random_median": [round(float(x), 4) for x in np.median(rc, 0)],
        "explain_ms_per_user": {
            "p50": round(1000 * float(np.percentile(t_explain, 50)), 1),
            "p99": round(1000 * float(np.percentile(t_explain, 99)), 1),
        },
        "curve_scale": "(score after removal - full score) / |full score - empty-window score|",
    }


class _WorkerPath:
    """The in-process model encoding variants as the worker's encoder process does."""

    def __init__(self, model: Any, exact_events: int | None) -> None:
        self.model, self.exact_events = model, exact_events
        self.dim, self.model_version = model.dim, model.model_version

    def encode_variants_many(self, jobs: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """``models.occlusion.encode_variants_many`` with this path's ``exact_events``."""
        from interest_stream.models.occlusion import encode_variants_many

        return encode_variants_many(self.model, jobs, self.exact_events)


def chart(result: dict[str, Any], out: Path) -> Path:
    """The deletion curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result["faithfulness"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    m = f["curve_m"]
    ax.plot(m, f["curve_top_mean"], "o-", label="top-attributed removed (mean)")
    ax.plot(m, f["curve_random_mean"], "s-", label="random removed (mean)")
    ax.plot(m, f["curve_top_median"], "o--", alpha=0.6, label="top-attributed (median)")
    ax.plot(m, f["curve_random_median"], "s--", alpha=0.6, label="random (median)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("events removed from the window")
    ax.set_ylabel("score change / |score - prior|")
    ax.set_title(
        f"Deletion curves, {f['pairs']} (user, item) pairs, top-{f['k']} blend "
        f"(pass {f['pass_fraction']:.1%})",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _metrics(url: str) -> dict[str, float]:
    from bench.pipeline import _metrics as read

    got: dict[str, float] = read(url)
    return got


def latency(
    settings: Settings,
    events: pd.DataFrame,
    model_dir: Path,
    *,
    rate: float = 50.0,
    seconds: float = 60.0,
    event_rate: float = 200.0,
    cache_users: int = 0,
    work_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Plain vs ``explain=true`` recommendations through the real stack (module docstring)."""
    from bench.api import load_phase
    from bench.ingest import fresh_settings
    from interest_stream.core.kafka import free_port
    from interest_stream.procs import Service, wait_http
    from interest_stream.streams.replay import replay_events
    from interest_stream.streams.topics import ensure_topics

    root = work_dir or Path(tempfile.mkdtemp(prefix="is-explain-"))
    wport = free_port()
    s = fresh_settings(settings, root).model_copy(
        update={
            "model_dir": model_dir, "api_port": free_port(), "worker_web_port": wport,
            "worker_urls": f"http://127.0.0.1:{wport}", "explain_cache_users": cache_users,
        }
    )  # fmt: skip
    ensure_topics(s)
    replay_events(events, s)
    worker = Service.cli("worker", ["worker"], s, root / "logs")
    api = Service.cli("api", ["serve"], s, root / "logs")
    aurl = f"http://127.0.0.1:{s.api_port}"
    wurl = s.worker_urls
    n = len(events)
    out: dict[str, Any] = {"events": n, "rate": rate, "seconds": seconds,
                           "event_rate": event_rate,
                           "explain_cache_users": cache_users}  # fmt: skip
    try:
        api.start()
        worker.start()
        wait_http(f"{aurl}/healthz", timeout=300)
        wait_http(f"{wurl}/healthz/", timeout=300)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            m = _metrics(f"{wurl}/metrics")
            if m.get("interest_worker_events_applied_total", 0) >= n:
                break
            worker.check()
            time.sleep(1.0)
        users = sorted(events["user_id"].astype(str).unique())
        time.sleep(5.0)  # the last flushes reach the API
        # the first explanation starts the worker's own explain encoder (a child process)
        import httpx

        httpx.get(f"{aurl}/v1/users/{users[0]}/recommendations",
                  params={"k": 10, "explain": "true"}, timeout=60)  # fmt: skip
        time.sleep(30.0)
        _say(progress, f"[explain] {n} events applied; {len(users)} users; load phases")
        # events keep arriving during the phases (the file again, paced), so windows change
        stop = threading.Event()

        def feed() -> None:
            while not stop.is_set():
                replay_events(events.head(int(event_rate * (2 * seconds + 30))), s,
                              rate=event_rate)  # fmt: skip

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        load_before = os.getloadavg()
        c0 = _cpu_snapshot(api.pid, worker.pid)
        out["plain_alone"] = load_phase(aurl, users, ["x"], rate=rate, duration=seconds,
                                        endpoint="recommendations", seed=1)  # fmt: skip
        c1 = _cpu_snapshot(api.pid, worker.pid)
        wb = _metrics(f"{wurl}/metrics")
        spies = _py_spy([("api", api.pid), ("worker", worker.pid)], seconds)
        both: dict[str, Any] = {}

        def run(name: str, endpoint: str, seed: int) -> None:
            both[name] = load_phase(aurl, users, ["x"], rate=rate, duration=seconds,
                                    endpoint=endpoint, seed=seed)  # fmt: skip

        threads = [
            threading.Thread(target=run, args=("explain", "recommendations_explain", 2)),
            threading.Thread(target=run, args=("plain", "recommendations", 3)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c2 = _cpu_snapshot(api.pid, worker.pid)
        wa = _metrics(f"{wurl}/metrics")
        stop.set()
        for spy in spies:
            spy.wait(timeout=60)
        out["cpu_percent_of_a_core"] = {
            "plain_alone": _cpu_share(c0, c1),
            "explain_with_plain": _cpu_share(c1, c2),
        }
        out["load_avg_before"] = [round(x, 2) for x in load_before]
        out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        out["explain_with_plain"] = both["explain"]
        out["plain_with_explain"] = both["plain"]
        out["worker_explains"] = {
            c: int(wa.get(k, 0) - wb.get(k, 0))
            for c in ("hit", "miss", "busy")
            for k in [f'interest_worker_explain_total{{cache="{c}"}}']
        }
        n_b = wa.get("interest_worker_explain_batch_count", 0) - wb.get(
            "interest_worker_explain_batch_count", 0
        )
        s_b = wa.get("interest_worker_explain_batch_sum", 0) - wb.get(
            "interest_worker_explain_batch_sum", 0
        )
        out["worker_batches"] = {"batches": int(n_b), "mean_windows": round(s_b / max(n_b, 1), 2)}
        from bench.pipeline import _hist_quantiles

        out["rss_mb"] = {"worker_tree": _tree_rss_mb(worker.pid), "api": _tree_rss_mb(api.pid)}

        out["worker_explain_ms"] = _hist_quantiles(wb, wa, "interest_worker_explain_ms")
        feeder.join(timeout=5)
    finally:
        worker.stop()
        api.stop()
    return out


def bench_explain(
    settings: Settings,
    events: pd.DataFrame,
    model_dir: Path,
    *,
    users: int = 200,
    k: int = 10,
    seed: int = 0,
    rate: float = 50.0,
    seconds: float = 60.0,
    event_rate: float = 200.0,
    cache_users: int = 0,
    skip_latency: bool = False,
    charts: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Both parts; returns every figure (and writes the chart into ``charts``)."""
    result: dict[str, Any] = {"uptime_before": _uptime()}
    _say(progress, "[explain] faithfulness ...")
    result["faithfulness"] = faithfulness(model_dir, events, users=users, k=k, seed=seed,
                                          progress=progress)  # fmt: skip
    if not skip_latency:
        _say(progress, "[explain] latency (real broker, worker, API) ...")
        result["latency"] = latency(settings, events, model_dir, rate=rate, seconds=seconds,
                                    event_rate=event_rate, cache_users=cache_users,
                                    progress=progress)  # fmt: skip
    result["uptime_after"] = _uptime()
    if charts is not None:
        result["chart"] = str(chart(result, charts / "explain-deletion-taobao.png"))
        (charts / "explain-taobao.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _py_spy(targets: list[tuple[str, int | None]], seconds: float) -> list[Any]:
    """``py-spy record`` of each target during the next phase, when the environment
    variable ``BENCH_EXPLAIN_PYSPY`` names a folder (diagnostics: the sampling costs CPU,
    so figures of record are taken without it)."""
    folder = os.environ.get("BENCH_EXPLAIN_PYSPY")
    if not folder:
        return []
    Path(folder).mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for name, pid in targets:
        if pid is None:
            continue
        cmd = [spy, "record", "--nonblocking", "--subprocesses", "-r", "20", "-f", "raw",
               "-d", str(int(seconds)), "-p", str(pid), "-o", f"{folder}/{name}.txt"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def dumps() -> None:  # what every thread waits on, every 10 s
        for k in range(int(seconds // 10)):
            time.sleep(10.0)
            for name, pid in targets:
                if pid is None:
                    continue
                cmd = [spy, "dump", "--nonblocking", "--subprocesses", "-p", str(pid)]
                got = subprocess.run(cmd, capture_output=True, text=True, check=False)
                with open(f"{folder}/{name}-dumps.txt", "a") as f:
                    f.write(f"=== {k} {time.strftime('%H:%M:%S')}\n{got.stdout}{got.stderr}\n")

    threading.Thread(target=dumps, daemon=True).start()
    return procs


def _proc_cpu(pid: int) -> tuple[float, float]:
    """``(own, waited-for children)`` CPU seconds of a process (``/proc/<pid>/stat``)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tck = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / tck, (int(f[13]) + int(f[14])) / tck


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return out


def _cpu_snapshot(api_pid: int | None, worker_pid: int | None) -> dict[str, float]:
    """CPU seconds so far: the API, the worker and each of its children (the encoder
    processes), this process (replay feeder included), its finished children (the load
    generators) and the whole box (``/proc/stat``, every agent's work included)."""
    snap: dict[str, float] = {"t": time.monotonic()}
    if api_pid:
        snap["api"] = _proc_cpu(api_pid)[0]
    if worker_pid:
        snap["worker"] = _proc_cpu(worker_pid)[0]
        for i, child in enumerate(sorted(_children(worker_pid))):
            snap[f"worker_child{i}"] = _proc_cpu(child)[0]
    own, waited = _proc_cpu(os.getpid())
    snap["bench_feeder"], snap["load_generators"] = own, waited
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    tck = os.sysconf("SC_CLK_TCK")
    snap["box_busy"] = (sum(ticks) - ticks[3] - ticks[4]) / tck  # minus idle and iowait
    return snap


def _cpu_share(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per process, the share of one core used between two snapshots (%)."""
    dt = max(after["t"] - before["t"], 1e-9)
    return {k: round(100.0 * (after[k] - before.get(k, 0.0)) / dt, 1) for k in after if k != "t"}


def _tree_rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process and its descendants (MB), from /proc."""
    if pid is None:
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(
                next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS"))
            )
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, StopIteration, ValueError):
            continue
    return round(total / 1024, 1)


def _uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:  # pragma: no cover
        return f"load {os.getloadavg()}"
