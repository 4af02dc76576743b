"""`interest-stream bench pipeline`: the whole system under load, with its two baselines.

One run, one broker, fresh topics:

1. **ceiling** — the event file is published, then read back by a bare aiokafka
   consumer (no processing): the consume rate of the same topics;
2. **catch-up** — a worker (with the model) and an API start on that backlog:
   events applied per second, users re-encoded per second;
3. **fixed rate** — the file is replayed again at each ``--rate``: applied
   events/s and **freshness** (event produced -> new vector readable in the
   API) p50/p95/p99 from the API's freshness histogram over that phase;
4. **floor** — a naive pipeline in one process: per event, update the window,
   encode the user alone (short + long), publish the record, wait for the ack.

Resident memory (VmRSS) of the worker and the API is sampled at the end.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interest_stream.procs import Service, http_get_json, wait_http
from interest_stream.settings import Settings
from streams.bench import fresh_settings, raw_consume_rate
from streams.replay import make_producer, replay_events
from streams.topics import ensure_topics
from streams.window import BehaviorWindow, WindowConfig

__all__ = ["bench_pipeline", "naive_pipeline_rate"]

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


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def naive_pipeline_rate(
    settings: Settings, events: pd.DataFrame, model_dir: Path, n: int = 2000
) -> dict[str, Any]:
    """The floor: per event, apply, encode that one user (short + long), publish, await ack."""
    from models import InterestModel
    from streams.reencode import build_record

    model = InterestModel.load(model_dir, device=settings.device)
    cfg = WindowConfig.from_settings(settings)
    windows: dict[str, BehaviorWindow] = {}
    producer = make_producer(settings)
    from interest_stream.events import Event

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
) -> dict[str, Any]:
    """Run the pipeline benchmark (see the module docstring); returns every figure."""
    from streams.kafka_local.broker import free_port

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
            st = replay_events(events, s, rate=rate)
            applied_target = wb.get("interest_worker_events_applied_total", 0) + n
            while time.monotonic() < t_start + st.seconds + 60:
                if _metrics(wurl).get("interest_worker_events_applied_total", 0) >= applied_target:
                    break
                time.sleep(0.25)
            time.sleep(1.0)
            wa, aa = _metrics(wurl), _metrics(f"{aurl}/metrics")
            dt = time.monotonic() - t_start
            short_key = 'interest_reencoded_users_total{horizon="short"}'
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
                    "freshness": _hist_quantiles(ab, aa, "interest_freshness_ms"),
                }
            )
        result["rss_mb"] = {"worker": _rss_mb(worker.pid), "api": _rss_mb(api.pid)}
    finally:
        worker.stop()
        api.stop()
    result["floor_naive"] = naive_pipeline_rate(s, events, model_dir, naive_events)
    ce = result["catch_up"]["applied_eps"]
    result["speedup_vs_naive"] = round(ce / max(result["floor_naive"]["eps"], 1e-9), 1)
    result["machine"] = {"cpus": _cpus(), "numpy": np.__version__}
    return result


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
