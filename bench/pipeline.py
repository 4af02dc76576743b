"""`interest-stream bench pipeline`: the whole system under load, with its two baselines.

One run, one broker, fresh topics:

1. **ceiling** — the event file is published, then read back by a bare aiokafka
   consumer (no processing): the consume rate of the same topics;
2. **catch-up** — a worker (with the model) and an API start on that backlog:
   events applied per second, users re-encoded per second;
3. **fixed rate** — the file is replayed again at each ``--rate``: applied
   events/s and **freshness** (event produced -> new vector readable in the
   API) p50/p95/p99 from the API's freshness histogram over that phase;
4. **load** (optional, ``load_rps``) — the API answers a mixed query load
   (:data:`bench.api.MIX`: interest, recommendations,
   similar items, audiences) at a fixed request rate for ``load_seconds``
   while the file is replayed again into the worker: errors, p50/p99;
5. **scale** (optional, ``scale_users``) — synthetic users cloned from the
   file's real users (:mod:`streams.synth`, same per-user statistics) are
   replayed into the running worker until its state holds that many users:
   applied events/s at that size and the worker's resident memory (peak and
   end) and on-disk state;
6. **floor** — a naive pipeline in one process: per event, update the window,
   encode the user alone (short + long), publish the record, wait for the ack.

Resident memory (VmRSS) of the worker and the API is sampled at the end.
:func:`write_charts` draws the throughput and freshness PNGs of a result.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.ingest import fresh_settings, raw_consume_rate
from bench.synth import synthetic_users
from interest_stream.core.settings import Settings
from interest_stream.procs import Service, http_get_json, wait_http
from interest_stream.streams.replay import make_producer, replay_events
from interest_stream.streams.topics import ensure_topics
from interest_stream.streams.window import BehaviorWindow, WindowConfig

__all__ = ["bench_pipeline", "naive_pipeline_rate", "scale_phase", "write_charts"]

log = logging.getLogger(__name__)


def _metrics(url: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value} (sums samples of the same name too)."""
    _, text = http_get_json(url)
    out: dict[str, float] = {}
    if not isinstance(text, str):
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        out[head] = v
        base = head.split("{", 1)[0]
        if "{" in head and not base.endswith("_bucket"):
            out[base] = out.get(base, 0.0) + v
    return out


def _hist_quantiles(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, Any]:
    """p50/p95/p99 of a Prometheus histogram over the interval between two scrapes."""
    buckets: list[tuple[float, float]] = []
    prefix = f'{name}_bucket{{le="'
    for key, v in after.items():
        if key.startswith(prefix):
            le_text = key[len(prefix) :].split('"', 1)[0]
            le = float("inf") if le_text == "+Inf" else float(le_text)
            buckets.append((le, v - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, Any] = {"samples": int(total)}
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    if count > 0:
        out["mean"] = round(
            (after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)) / count, 1
        )
    for q in (0.5, 0.95, 0.99):
        if total <= 0:
            out[f"p{int(q * 100)}_ms"] = None
            continue
        target, prev_le, prev_c = q * total, 0.0, 0.0
        val = None
        for le, c in buckets:
            if c >= target:
                if le == float("inf"):
                    val = prev_le
                else:
                    frac = (target - prev_c) / (c - prev_c) if c > prev_c else 1.0
                    val = prev_le + frac * (le - prev_le)
                break
            prev_le, prev_c = le, c
        out[f"p{int(q * 100)}_ms"] = None if val is None else round(val, 1)
    return out


def _vm_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return 0.0
    return 0.0


def _rss_mb(pid: int | None) -> float | None:
    """Resident memory (MB) of a process plus its live descendants (the worker's
    encoder process counts as the worker's)."""
    if pid is None or not Path(f"/proc/{pid}").exists():
        return None
    return round(sum(_vm_rss_mb(p) for p in [pid, *_descendants(pid)]), 1)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from /proc)."""
    parent_of = {
        int(e.name): int(f[1])
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and (f := _stat(int(e.name))) is not None
    }
    found: list[int] = []
    frontier = {pid}
    while frontier:
        nxt = {child for child, parent in parent_of.items() if parent in frontier}
        nxt -= set(found) | {pid}
        found.extend(sorted(nxt))
        frontier = nxt
    return found


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds so far of a process and its live descendants (all
    threads; e.g. the worker plus its encoder process), from /proc."""
    if pid is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        f = _stat(p)
        if f is None:
            if p == pid:
                return None
            continue
        total += (int(f[11]) + int(f[12])) / ticks
    return total


def _broker_pid() -> int | None:
    """Pid of the broker ``interest-stream kafka start`` runs (``None`` for an external one)."""
    from interest_stream.streams.kafka_local.broker import status

    try:
        return status().pid
    except Exception:  # the figure is optional: never fail a benchmark over it
        return None


def _cpu_snapshot(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds per named process; ``bench`` is this process (the replay producer)."""
    out = {name: v for name, pid in pids.items() if (v := _cpu_s(pid)) is not None}
    t = os.times()
    out["bench"] = t.user + t.system
    return out


def _cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, Any]:
    """Cores used per process over an interval (1.0 = one core busy all the time)."""
    return {
        k: round((after[k] - before[k]) / seconds, 2) for k in after if k in before and seconds > 0
    }


def naive_pipeline_rate(
    settings: Settings, events: pd.DataFrame, model_dir: Path, n: int = 2000
) -> dict[str, Any]:
    """The floor: per event, apply, encode that one user (short + long), publish, await ack."""
    from interest_stream.models import InterestModel
    from interest_stream.streams.reencode import build_record

    model = InterestModel.load(model_dir, device=settings.device)
    cfg = WindowConfig.from_settings(settings)
    windows: dict[str, BehaviorWindow] = {}
    producer = make_producer(settings)
    from interest_stream.core.events import Event

    sample = events.head(n)
    t0 = time.perf_counter()
    rows = zip(
        sample["user_id"], sample["item_id"], sample["event_type"], sample["ts"], strict=True
    )
    for i, (user_raw, item, etype, ts) in enumerate(rows):
        user = str(user_raw)
        w = windows.get(user) or BehaviorWindow(user, cfg)
        windows[user] = w
        w.apply(Event(user, str(item), str(etype), int(ts)), "naive", 0, i)
        short = model.encode_short([w.short()])[0]
        long = model.encode_long([w.long()])[0]
        rec = build_record(user, w, short, long, model.model_version)
        producer.send(settings.output_topic, key=user.encode(), value=json.dumps(rec).encode()).get(
            timeout=30
        )
    seconds = time.perf_counter() - t0
    producer.close()
    return {
        "events": len(sample),
        "seconds": round(seconds, 2),
        "eps": round(len(sample) / seconds, 1),
    }


def bench_pipeline(
    settings: Settings,
    events: pd.DataFrame,
    model_dir: Path,
    *,
    rates: tuple[float, ...] = (1000.0, 2000.0),
    work_dir: Path | None = None,
    naive_events: int = 2000,
    scale_users: int = 0,
    scale_events_per_user: int | None = 4,
    load_rps: float = 0.0,
    load_seconds: float = 60.0,
    load_event_rate: float = 500.0,
) -> dict[str, Any]:
    """Run the pipeline benchmark (see the module docstring); returns every figure.

    Args:
        settings: Base settings (bootstrap, security); topics and ports are fresh.
        events: The event file to replay (canonical).
        model_dir: Checkpoint the worker encodes with.
        rates: Fixed replay rates (events/s) of the freshness phases.
        work_dir: Folder for state and logs (default: a new temporary folder).
        naive_events: Events pushed through the naive per-event floor.
        scale_users: Synthetic users of the scale phase (0 = skip it).
        scale_events_per_user: Latest events kept per synthetic user (``None`` = all).
        load_rps: Mixed API queries per second of the load phase (0 = skip it).
        load_seconds: Length of the load phase.
        load_event_rate: Events/s replayed into the worker during the load phase
            (the file's head, as many events as the phase lasts).
    """
    from interest_stream.streams.kafka_local.broker import free_port

    root = work_dir or Path(tempfile.mkdtemp(prefix="is-pipeline-"))
    s = fresh_settings(settings, root).model_copy(
        update={"model_dir": model_dir, "api_port": free_port(), "worker_web_port": free_port()}
    )
    ensure_topics(s)
    n = len(events)
    result: dict[str, Any] = {"events": n, "users": int(events["user_id"].nunique())}
    replay = replay_events(events, s)
    result["replay_eps"] = round(replay.rate, 1)
    result["ceiling_raw_consume"] = raw_consume_rate(s, n)
    worker = Service.cli("worker", ["worker"], s, root / "logs")
    api = Service.cli("api", ["serve"], s, root / "logs")
    wurl = f"http://127.0.0.1:{s.worker_web_port}/metrics"
    aurl = f"http://127.0.0.1:{s.api_port}"
    try:
        api.start()
        wait_http(f"{aurl}/healthz", timeout=120)
        t0 = time.monotonic()
        worker.start()
        pids = {"worker": worker.pid, "api": api.pid, "broker": _broker_pid()}
        deadline = t0 + 900
        while time.monotonic() < deadline:
            m = _metrics(wurl)
            if m.get("interest_worker_events_applied_total", 0) >= n:
                break
            worker.check()
            time.sleep(0.5)
        m = _metrics(wurl)
        seconds = (
            m["interest_worker_last_applied_timestamp_seconds"]
            - m["interest_worker_first_consumed_timestamp_seconds"]
        )
        result["catch_up"] = {
            "applied": int(m.get("interest_worker_events_applied_total", 0)),
            "applied_eps": round(m.get("interest_worker_events_applied_total", 0) / seconds, 1),
            "seconds": round(seconds, 2),
            "reencoded_short": int(m.get('interest_reencoded_users_total{horizon="short"}', 0)),
            "reencoded_long": int(m.get('interest_reencoded_users_total{horizon="long"}', 0)),
        }
        result["phases"] = []
        for rate in rates:
            time.sleep(2.0)
            wb, ab = _metrics(wurl), _metrics(f"{aurl}/metrics")
            t_start = time.monotonic()
            cpu_b = _cpu_snapshot(pids)
            st = replay_events(events, s, rate=rate)
            cpu_a = _cpu_snapshot(pids)
            applied_target = wb.get("interest_worker_events_applied_total", 0) + n
            while time.monotonic() < t_start + st.seconds + 60:
                if _metrics(wurl).get("interest_worker_events_applied_total", 0) >= applied_target:
                    break
                time.sleep(0.25)
            time.sleep(1.0)
            wa, aa = _metrics(wurl), _metrics(f"{aurl}/metrics")
            dt = time.monotonic() - t_start
            short_key = 'interest_reencoded_users_total{horizon="short"}'
            long_key = 'interest_reencoded_users_total{horizon="long"}'
            result["phases"].append(
                {
                    "target_eps": rate,
                    "sent_eps": round(st.rate, 1),
                    "applied_eps": round(
                        (
                            wa.get("interest_worker_events_applied_total", 0)
                            - wb.get("interest_worker_events_applied_total", 0)
                        )
                        / st.seconds,
                        1,
                    ),
                    "reencodes_per_s": round((wa.get(short_key, 0) - wb.get(short_key, 0)) / dt, 1),
                    "long_reencodes_per_s": round(
                        (wa.get(long_key, 0) - wb.get(long_key, 0)) / dt, 1
                    ),
                    "freshness": _hist_quantiles(ab, aa, "interest_freshness_ms"),
                    "transit_ms": _hist_quantiles(ab, aa, "interest_record_transit_ms"),
                    "flush_users": _hist_quantiles(wb, wa, "interest_reencode_batch_users"),
                    "encode_ms": _hist_quantiles(wb, wa, "interest_reencode_latency_ms"),
                    "publish_ms": _hist_quantiles(wb, wa, "interest_publish_latency_ms"),
                    "cpu_cores": _cpu_share(cpu_b, cpu_a, st.seconds),
                }
            )
        result["rss_mb"] = {"worker": _rss_mb(worker.pid), "api": _rss_mb(api.pid)}
        if load_rps > 0:
            result["load"] = load_phase(
                s, events, model_dir, aurl, wurl, load_rps, load_seconds, load_event_rate
            )
        if scale_users > 0:
            result["scale"] = scale_phase(
                s, events, worker, scale_users, scale_events_per_user, root
            )
            result["rss_mb_after_scale"] = {
                "worker": _rss_mb(worker.pid),
                "api": _rss_mb(api.pid),
            }
    finally:
        worker.stop()
        api.stop()
    result["floor_naive"] = naive_pipeline_rate(s, events, model_dir, naive_events)
    ce = result["catch_up"]["applied_eps"]
    result["speedup_vs_naive"] = round(ce / max(result["floor_naive"]["eps"], 1e-9), 1)
    result["machine"] = {"cpus": _cpus(), "numpy": np.__version__}
    return result


def _du_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return round(total / 2**20, 1)


def load_phase(
    settings: Settings,
    events: pd.DataFrame,
    model_dir: Path,
    api_url: str,
    worker_metrics_url: str,
    rps: float,
    seconds: float,
    event_rate: float = 500.0,
) -> dict[str, Any]:
    """Mixed API queries at ``rps`` while events are replayed at ``event_rate`` meanwhile."""
    import threading

    from bench.api import load_phase as api_load
    from interest_stream.models import load_item_vectors

    users = sorted({str(u) for u in events["user_id"].unique()})
    items, _, _ = load_item_vectors(model_dir)
    replayed = events.head(max(1, int(event_rate * seconds)))
    before = _metrics(worker_metrics_url)
    replay_error: list[BaseException] = []

    def replay() -> None:
        try:
            replay_events(replayed, settings, rate=event_rate)
        except BaseException as exc:  # reported in the result
            replay_error.append(exc)

    t = threading.Thread(target=replay, name="load-replay", daemon=True)
    t.start()
    res = api_load(api_url, users, items, rate=rps, duration=seconds)
    t.join(timeout=seconds + 120)
    after = _metrics(worker_metrics_url)
    applied = after.get("interest_worker_events_applied_total", 0) - before.get(
        "interest_worker_events_applied_total", 0
    )
    res["events_replayed"] = len(replayed)
    res["events_replayed_eps"] = round(event_rate, 1)
    res["events_applied_during"] = int(applied)
    res["replay_error"] = repr(replay_error[0]) if replay_error else None
    return res


def scale_phase(
    settings: Settings,
    events: pd.DataFrame,
    worker: Service,
    n_users: int,
    events_per_user: int | None,
    root: Path,
) -> dict[str, Any]:
    """Fill the running worker with ``n_users`` synthetic users; measure rate and memory."""
    wurl = f"http://127.0.0.1:{settings.worker_web_port}/metrics"
    plan, chunks = synthetic_users(events, n_users, seed=11, max_events_per_user=events_per_user)
    log.info(
        "scale phase: %d synthetic users, %d events (%.1f per user, %d templates)",
        plan.users, plan.events, plan.mean_events_per_user, plan.templates,
    )  # fmt: skip
    before = _metrics(wurl)
    target = before.get("interest_worker_events_applied_total", 0) + plan.events
    short_key = 'interest_reencoded_users_total{horizon="short"}'
    peak = 0.0

    def sample() -> float:
        nonlocal peak
        rss = _rss_mb(worker.pid) or 0.0
        peak = max(peak, rss)
        return rss

    producer = make_producer(settings)
    t0 = time.monotonic()
    sent = 0
    try:
        for chunk in chunks:
            sent += replay_events(chunk, settings, producer=producer).sent
            sample()
            worker.check()
    finally:
        producer.close(timeout=30)
    send_s = time.monotonic() - t0
    deadline = time.monotonic() + max(900.0, plan.events / 1000.0)
    applied = before.get("interest_worker_events_applied_total", 0)
    while time.monotonic() < deadline:
        m = _metrics(wurl)
        applied = m.get("interest_worker_events_applied_total", 0)
        sample()
        if applied >= target:
            break
        worker.check()
        time.sleep(1.0)
    seconds = time.monotonic() - t0
    after = _metrics(wurl)
    # let the re-encoder drain before the memory reading at rest
    for _ in range(120):
        if _metrics(wurl).get("interest_reencode_pending_users", 0) == 0:
            break
        sample()
        time.sleep(1.0)
    end = sample()
    return {
        "users": plan.users,
        "events": plan.events,
        "sent": sent,
        "mean_events_per_user": plan.mean_events_per_user,
        "events_per_user_cap": events_per_user,
        "send_seconds": round(send_s, 1),
        "applied": int(applied - before.get("interest_worker_events_applied_total", 0)),
        "applied_eps": round(
            (applied - before.get("interest_worker_events_applied_total", 0)) / seconds, 1
        ),
        "seconds": round(seconds, 1),
        "reencoded_short": int(after.get(short_key, 0) - before.get(short_key, 0)),
        "worker_rss_mb_peak": peak,
        "worker_rss_mb_end": end,
        "state_dir_mb": _du_mb(settings.state_dir) if settings.state_dir.exists() else None,
    }


def write_charts(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Throughput and freshness PNGs of a :func:`bench_pipeline` result; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    bars = [("bare consume\n(ceiling)", result["ceiling_raw_consume"]["eps"])]
    bars.append(("worker + encoder\n(catch-up)", result["catch_up"]["applied_eps"]))
    if "scale" in result:
        bars.append((f"at {result['scale']['users']:,} users", result["scale"]["applied_eps"]))
    bars.append(("naive per-event\n(floor)", result["floor_naive"]["eps"]))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names, values = zip(*bars, strict=True)
    ax.barh(names, values, color=["#9aa5b1", "#2f6fde", "#5b8def", "#d9822b"][: len(values)])
    ax.set_xscale("log")
    ax.set_xlabel("events per second (log scale)")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}", va="center")
    ax.set_title("interest-stream pipeline: events applied per second")
    fig.tight_layout()
    p = out_dir / "pipeline_throughput.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    phases = [ph for ph in result.get("phases", []) if ph["freshness"].get("p50_ms") is not None]
    if phases:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        x = np.arange(len(phases))
        for i, q in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            vals = [ph["freshness"][q] for ph in phases]
            ax.bar(x + (i - 1) * 0.27, vals, width=0.27, label=q.replace("_ms", ""))
        ax.set_xticks(x, [f"{ph['target_eps']:,.0f} ev/s" for ph in phases])
        ax.axhline(1000, color="#c23030", linestyle="--", linewidth=1, label="1 s target (p99)")
        ax.set_ylabel("freshness, ms (event produced → vector in API)")
        ax.legend()
        ax.set_title("freshness at fixed event rates")
        fig.tight_layout()
        p = out_dir / "pipeline_freshness.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
