"""`bench pipeline --users N --zipf S`: the pipeline under many users with skewed activity.

Real traffic is millions of users with a few events each, not the Taobao slice's 814
users replayed. Here each event's user is drawn from a Zipf(``S``) over ``N`` users (rank
``k`` has weight ``k^-S``; ranks are mapped to users by a random permutation), and user
``u``'s ``j``-th event is event ``j mod len`` of the real Taobao user ``u`` clones
(:func:`bench.synth.templates`: items, types and their order are the template's; event
times are the send times). One run, one broker, fresh topics:

1. **ceiling** — a backlog of ``backlog`` events is produced, then read back by a bare
   aiokafka consumer;
2. **catch-up** — a worker and an API start on that backlog: applied events/s;
3. **fixed rate** — events at each ``--rate`` for ``seconds``, while **probe events** of
   one extra user are sent one at a time: each probe's freshness is the time from its
   send to the API answering ``GET /v1/users/{probe}/interest`` with its version;
4. **floor** — the naive per-event pipeline (:func:`bench.pipeline.naive_pipeline_rate`).

Every phase reports the **per-event cost breakdown** from the worker's own metrics (stage
wall times per applied event) beside the CPU per event of each process (/proc).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.ingest import fresh_settings, raw_consume_rate
from bench.pipeline import (
    _broker_pid,
    _cpu_s,
    _descendants,
    _metrics,
    _rss_mb,
    _stat,
    naive_pipeline_rate,
)
from bench.synth import templates
from interest_stream.core.settings import Settings
from interest_stream.procs import Service, http_get_json, wait_http
from interest_stream.streams.replay import make_producer, replay_events
from interest_stream.streams.topics import ensure_topics

__all__ = ["ZipfTraffic", "bench_pipeline_zipf", "cost_breakdown"]

log = logging.getLogger(__name__)

PROBE_USER = "probe-user-0"


class ZipfTraffic:
    """Events of ``n_users`` cloned users with Zipf(``s``) activity (see the module docstring).

    Args:
        events: The canonical file whose users are the templates.
        n_users: Users drawn from.
        s: Zipf exponent (> 0; 1.1 gives a heavy head and a long tail).
        seed: Seed of the permutation, the templates and the draws.
    """

    def __init__(self, events: pd.DataFrame, n_users: int, s: float, seed: int = 0) -> None:
        self.n_users, self.s = n_users, s
        self._rng = np.random.default_rng(seed)
        self._starts, self._lengths, self._items, self._types, _ = templates(events, None)
        weights = np.arange(1, n_users + 1, dtype=np.float64) ** -s
        self._cdf = np.cumsum(weights) / weights.sum()
        self._user_of_rank = self._rng.permutation(n_users)
        self._template = self._rng.integers(0, len(self._starts), size=n_users)
        self._seen = np.zeros(n_users, dtype=np.int64)  # events drawn so far per user

    def draw(self, n: int, start_ms: int, rate: float) -> pd.DataFrame:
        """The next ``n`` events; event ``i``'s time is ``start_ms + i / rate`` seconds."""
        ranks = np.searchsorted(self._cdf, self._rng.random(n), side="right")
        users = self._user_of_rank[np.minimum(ranks, self.n_users - 1)]
        order = np.argsort(users, kind="stable")
        su = users[order]
        first = np.r_[True, su[1:] != su[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        occ = np.empty(n, dtype=np.int64)
        occ[order] = np.arange(n) - group_start + self._seen[su]
        np.add.at(self._seen, users, 1)
        tpl = self._template[users]
        idx = self._starts[tpl] + occ % self._lengths[tpl]
        return pd.DataFrame(
            {
                "user_id": np.char.add("z", users.astype(str)).astype(object),
                "item_id": self._items[idx],
                "event_type": self._types[idx],
                "ts": start_ms + (np.arange(n) * 1000.0 / rate).astype(np.int64),
            }
        )

    def distinct_share(self, df: pd.DataFrame) -> float:
        """Distinct users per event in ``df`` (1.0 = every event another user)."""
        return round(df["user_id"].nunique() / max(1, len(df)), 3)


class Probe(threading.Thread):
    """Sends one event of :data:`PROBE_USER` at a time; times it to the API's new version."""

    def __init__(self, settings: Settings, api_url: str, item: str, interval_s: float) -> None:
        super().__init__(name="probe", daemon=True)
        self.settings, self.url, self.item, self.interval_s = settings, api_url, item, interval_s
        self.samples_ms: list[float] = []
        self.lost = 0
        self._stop_flag = threading.Event()

    def _version(self) -> int:
        code, body = http_get_json(f"{self.url}/v1/users/{PROBE_USER}/interest", timeout=5.0)
        return int(body.get("version", 0)) if code == 200 and isinstance(body, dict) else 0

    def run(self) -> None:
        """Probe until :meth:`stop`: send, poll every 5 ms (30 s at most), wait, repeat."""
        import json

        producer = make_producer(self.settings)
        topic = self.settings.event_topics[0]
        version = self._version()
        try:
            while not self._stop_flag.is_set():
                t0 = time.time()
                value = {"user_id": PROBE_USER, "item_id": self.item, "event_type": "view",
                         "ts": int(t0 * 1000)}  # fmt: skip
                producer.send(topic, key=PROBE_USER.encode(), value=json.dumps(value).encode())
                producer.flush(timeout=30)
                version += 1
                while time.time() < t0 + 30.0 and self._version() < version:
                    time.sleep(0.005)
                seen = time.time()
                if seen >= t0 + 30.0:
                    self.lost += 1
                    version = self._version()
                else:
                    self.samples_ms.append((seen - t0) * 1000.0)
                self._stop_flag.wait(max(0.0, self.interval_s - (time.time() - t0)))
        finally:
            producer.close(timeout=10)

    def stop(self) -> dict[str, Any]:
        """Stop probing; the freshness figures (ms)."""
        self._stop_flag.set()
        self.join(timeout=40)
        s = np.asarray(self.samples_ms)
        out: dict[str, Any] = {"probes": len(s), "lost_after_30s": self.lost}
        if len(s):
            for q in (50, 95, 99):
                out[f"p{q}_ms"] = round(float(np.percentile(s, q)), 1)
            out["max_ms"] = round(float(s.max()), 1)
        return out


def _parent_cpu_s(pid: int | None) -> float | None:
    f = _stat(pid) if pid is not None else None
    if f is None:
        return None
    import os

    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(workers: int | list[int | None] | None, api: int | None) -> dict[str, float]:
    """CPU seconds so far: worker parent(s), their encoder children, API, broker (summed)."""
    out: dict[str, float] = {}
    for worker in workers if isinstance(workers, list) else [workers]:
        wp = _parent_cpu_s(worker)
        if wp is not None and worker is not None:
            out["worker_loop_process"] = out.get("worker_loop_process", 0.0) + wp
            kids = [_parent_cpu_s(p) for p in _descendants(worker)]
            out["worker_encoder_process"] = out.get("worker_encoder_process", 0.0) + sum(
                k for k in kids if k is not None
            )
    for name, pid in (("api", api), ("broker", _broker_pid())):
        if (v := _cpu_s(pid)) is not None:
            out[name] = v
    return out


_FIRST = "interest_worker_first_consumed_timestamp_seconds"
_LAST = "interest_worker_last_applied_timestamp_seconds"


def metrics_all(urls: list[str]) -> dict[str, float]:
    """All workers' metrics summed (first consumed: the earliest; last applied: the latest)."""
    out: dict[str, float] = {}
    for url in urls:
        for k, v in _metrics(url).items():
            if k == _FIRST:
                out[k] = min(out.get(k, v), v)
            elif k == _LAST:
                out[k] = max(out.get(k, v), v)
            else:
                out[k] = out.get(k, 0.0) + v
    return out


def _check(workers: list[Service]) -> None:
    for w in workers:
        w.check()


_W_STAGES = 'interest_worker_stage_seconds_total{stage="%s"}'
_R_STAGES = 'interest_reencode_stage_seconds_total{stage="%s"}'


def cost_breakdown(
    wb: dict[str, float],
    wa: dict[str, float],
    cpu_b: dict[str, float],
    cpu_a: dict[str, float],
) -> dict[str, Any]:
    """Per applied event: stage wall µs (worker metrics) and CPU µs per process (/proc).

    ``consume_faust_other`` is the loop process's CPU minus its CPU-bound stages (apply,
    submit, records): consuming, Faust's machinery, the Kafka clients and the event loop.
    """
    applied = wa.get("interest_worker_events_applied_total", 0) - wb.get(
        "interest_worker_events_applied_total", 0
    )
    if applied <= 0:
        return {"applied": 0}

    def d(key: str) -> float:
        return wa.get(key, 0.0) - wb.get(key, 0.0)

    per = 1e6 / applied
    batch = d("interest_worker_batch_apply_seconds_sum")
    changelog = d(_W_STAGES % "changelog")
    stages = {
        "apply": batch - changelog,
        "changelog_produce_and_ack": changelog,
        "submit": d(_R_STAGES % "submit"),
        "short_encode": d(_R_STAGES % "short"),
        "long_encode": d(_R_STAGES % "long"),
        "records": d(_R_STAGES % "records"),
        "produce_and_ack": d(_R_STAGES % "publish"),
    }
    cpu = {k: cpu_a[k] - cpu_b[k] for k in cpu_a if k in cpu_b}
    out: dict[str, Any] = {
        "applied": int(applied),
        "stage_wall_us_per_event": {k: round(v * per, 1) for k, v in stages.items()},
        "cpu_us_per_event": {k: round(v * per, 1) for k, v in cpu.items()},
        "long_encodes": {
            p: int(d(f'interest_long_encodes_total{{path="{p}"}}')) for p in ("incremental", "full")
        },
        "short_encodes": int(d('interest_reencoded_users_total{horizon="short"}')),
    }
    if "worker_loop_process" in cpu:
        # the stages are wall times: on a loaded machine they include waiting for a core,
        # and the residual is then meaningless (None)
        sync = stages["apply"] + stages["submit"] + stages["records"]
        rest = (cpu["worker_loop_process"] - sync) * per
        out["cpu_us_per_event"]["consume_faust_other"] = round(rest, 1) if rest >= 0 else None
    return out


def _wait_applied(
    urls: list[str], target: float, workers: list[Service], timeout: float
) -> dict[str, float]:
    """Poll the workers' metrics until ``target`` events are applied (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    m = metrics_all(urls)
    while time.monotonic() < deadline:
        m = metrics_all(urls)
        if m.get("interest_worker_events_applied_total", 0) >= target:
            break
        _check(workers)
        time.sleep(0.5)
    return m


def _wait_drained(urls: list[str], workers: list[Service], timeout: float) -> float:
    """Wait until no worker's re-encoder has anybody pending; the wall clock then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics_all(urls).get("interest_reencode_pending_users", 1) == 0:
            break
        _check(workers)
        time.sleep(0.25)
    return time.time()


def _rate_phase(
    s: Settings, traffic: ZipfTraffic, rate: float, seconds: float,
    urls: tuple[list[str], str], workers: list[Service],
    pids: tuple[list[int | None], int | None], probe_item: str, probe_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Events at ``rate`` for ``seconds`` with probes; applied rate, freshness, costs."""
    wurls, aurl = urls
    df = traffic.draw(int(rate * seconds), int(time.time() * 1000), rate)
    wb, cb = metrics_all(wurls), cpu_by_process(*pids)
    probe = Probe(s, aurl, probe_item, probe_s)
    probe.start()
    st = replay_events(df, s, rate=rate)
    applied_target = wb.get("interest_worker_events_applied_total", 0) + len(df)
    behind = _wait_applied(wurls, applied_target, workers, timeout=min(120.0, seconds))
    freshness = probe.stop()
    _wait_drained(wurls, workers, timeout=120)
    wa, ca = metrics_all(wurls), cpu_by_process(*pids)
    in_time = behind.get("interest_worker_events_applied_total", 0) - wb.get(
        "interest_worker_events_applied_total", 0
    )
    return {
        "target_eps": rate,
        "events": len(df),
        "distinct_users_per_event": traffic.distinct_share(df),
        "sent_eps": round(st.rate, 1),
        "applied_eps_while_sending": round(in_time / max(st.seconds, 1e-9), 1),
        "backlog_left": int(
            max(0, applied_target - behind.get("interest_worker_events_applied_total", 0))
        ),
        "probe_freshness": freshness,
        "cost": cost_breakdown(wb, wa, cb, ca),
        "cores": {k: round((ca[k] - cb[k]) / st.seconds, 2) for k in ca if k in cb},
    }


def bench_pipeline_zipf(
    settings: Settings,
    events: pd.DataFrame,
    model_dir: Path,
    *,
    users: int,
    zipf: float,
    rates: tuple[float, ...] = (5000.0,),
    seconds: float = 60.0,
    backlog: int = 200_000,
    naive_events: int = 500,
    probe_interval_s: float = 0.1,
    work_dir: Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run the skewed-traffic benchmark (see the module docstring); returns every figure.

    ``workers`` worker processes share the event topics' partitions (one consumer group,
    a state folder and web port each); their metrics and CPU are summed.
    """
    from interest_stream.streams.kafka_local.broker import free_port

    root = work_dir or Path(tempfile.mkdtemp(prefix="is-zipf-"))
    s = fresh_settings(settings, root).model_copy(
        update={"model_dir": model_dir, "api_port": free_port(), "worker_web_port": free_port()}
    )
    if workers > s.topic_partitions:
        raise ValueError(f"{workers} workers but {s.topic_partitions} partitions")
    ensure_topics(s)
    traffic = ZipfTraffic(events, users, zipf, seed=7)
    start = int(time.time() * 1000) - int(backlog / 5.0)  # the backlog: the last backlog/5k s
    first = traffic.draw(backlog, start, 5000.0)
    result: dict[str, Any] = {"users": users, "zipf": zipf, "backlog_events": backlog}
    result["workers"] = workers
    result["backlog_distinct_users_per_event"] = traffic.distinct_share(first)
    replay_events(first, s)
    result["ceiling_raw_consume"] = raw_consume_rate(s, backlog)
    ws = [s] + [
        s.model_copy(
            update={"worker_web_port": free_port(), "state_dir": Path(f"{s.state_dir}-w{i}")}
        )
        for i in range(1, workers)
    ]
    procs = [Service.cli(f"worker{i}", ["worker"], w, root / "logs") for i, w in enumerate(ws)]
    api = Service.cli("api", ["serve"], s, root / "logs")
    wurls = [f"http://127.0.0.1:{w.worker_web_port}/metrics" for w in ws]
    aurl = f"http://127.0.0.1:{s.api_port}"
    try:
        api.start()
        wait_http(f"{aurl}/healthz", timeout=120)
        for w in procs:
            w.start()
        pids = ([w.pid for w in procs], api.pid)
        for u in wurls:
            wait_http(u, timeout=300)  # the encoder process is up: its start is not counted
        cb = cpu_by_process(*pids)
        m = _wait_applied(wurls, backlog, procs, timeout=1800)
        seconds_cu = m[_LAST] - m[_FIRST]
        applied = m.get("interest_worker_events_applied_total", 0)
        drained = _wait_drained(wurls, procs, timeout=600)
        result["catch_up"] = {
            "applied": int(applied),
            "applied_eps": round(applied / max(seconds_cu, 1e-9), 1),
            "seconds": round(seconds_cu, 1),
            "reencode_drained_after_s": round(drained - m[_FIRST], 1),
            "cost": cost_breakdown({}, metrics_all(wurls), cb, cpu_by_process(*pids)),
        }
        item = str(first["item_id"].iloc[0])
        result["phases"] = [
            _rate_phase(s, traffic, r, seconds, (wurls, aurl), procs, pids, item, probe_interval_s)
            for r in rates
        ]
        result["rss_mb"] = {"workers": [_rss_mb(w.pid) for w in procs], "api": _rss_mb(api.pid)}
    finally:
        for w in procs:
            w.stop()
        api.stop()
    result["floor_naive"] = naive_pipeline_rate(s, first, model_dir, naive_events)
    result["catch_up_vs_naive"] = round(
        result["catch_up"]["applied_eps"] / max(result["floor_naive"]["eps"], 1e-9), 1
    )
    import os

    result["machine"] = {"cpus": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg()}
    return result
