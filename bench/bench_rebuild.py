"""API replica rebuild benchmark: how long a (re)started replica takes to be ready.

Produces ``--users`` output records (dimension ``--dim``, random unit vectors) to
a fresh compacted output topic, then starts ``interest-stream serve`` and times
process start -> ``/readyz`` 200 (the replica consumed the whole topic into its
user index). It then SIGKILLs the replica and times a second start, which is
what a crashed replica costs. Uses the broker at ``--bootstrap``, or starts a
local one of its own (own port and data dir) and stops it at the end.

    .venv/bin/python bench/bench_rebuild.py                     # 100,000 users, dim 64
    .venv/bin/python bench/bench_rebuild.py --users 20000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kafka import KafkaProducer

from interest_stream.core.settings import Settings
from interest_stream.procs import settings_env
from interest_stream.streams.kafka_local.broker import BrokerConfig, free_port, start, stop
from interest_stream.streams.topics import ensure_topics


def produce(settings: Settings, users: int, dim: int) -> float:
    """Publish one record per user; returns the seconds it took."""
    rng = np.random.default_rng(0)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1, linger_ms=50,
                             batch_size=1024 * 1024, compression_type=None)  # fmt: skip
    t0 = time.monotonic()
    chunk = 10_000
    for lo in range(0, users, chunk):
        n = min(chunk, users - lo)
        short = rng.standard_normal((n, dim)).astype(np.float32)
        long = rng.standard_normal((n, dim)).astype(np.float32)
        short /= np.linalg.norm(short, axis=1, keepdims=True)
        long /= np.linalg.norm(long, axis=1, keepdims=True)
        for j in range(n):
            user = f"user{lo + j}"
            rec = {"user_id": user, "version": 1, "event_time": 1_700_000_000_000,
                   "updated_at": 1_700_000_000_100, "model_version": "bench",
                   "short": np.round(short[j], 6).tolist(),
                   "long": np.round(long[j], 6).tolist()}  # fmt: skip
            producer.send(settings.output_topic, key=user.encode(), value=json.dumps(rec).encode())
    producer.flush(300)
    producer.close(10)
    return time.monotonic() - t0


def time_to_ready(settings: Settings, log: Path, timeout: float = 600.0) -> tuple[float, Any]:
    """Start ``interest-stream serve``; seconds until /readyz is 200, and the process."""
    env = settings_env(settings)
    env["INTEREST_LOG_LEVEL"] = "WARNING"
    cli = Path(sys.executable).with_name("interest-stream")
    url = f"http://127.0.0.1:{settings.api_port}/readyz"
    with log.open("ab") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen([str(cli), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}; see {log}")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return time.monotonic() - t0, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"not ready within {timeout:.0f}s; see {log}")


def main() -> None:
    """Parse arguments, run, print (and optionally write JSON)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--bootstrap", default=None, help="an existing broker (default: start one)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    cfg = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        cfg = BrokerConfig(data_dir=work / "kafka", port=free_port())
        bootstrap = start(cfg, timeout=180.0).bootstrap
    try:
        ns = f"rb{uuid.uuid4().hex[:8]}"
        s = Settings(
            kafka_bootstrap=bootstrap,
            output_topic=f"{ns}.user-interest",
            dlq_topic=f"{ns}.events.dlq",
            event_topics=(f"{ns}.events.view",),
            app_id=f"{ns}-app",
            api_port=free_port(),
            state_dir=work / "state",
        )
        ensure_topics(s)
        produce_s = produce(s, args.users, args.dim)
        first, proc = time_to_ready(s, work / "api-1.log")
        users = httpx.get(f"http://127.0.0.1:{s.api_port}/readyz").json()["users"]
        rss_mb = 0.0
        with open(f"/proc/{proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss_mb = int(line.split()[1]) / 1024.0
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        again, proc2 = time_to_ready(s, work / "api-2.log")
        proc2.terminate()
        proc2.wait(30)
    finally:
        if cfg is not None:
            stop(cfg)
    figures = {
        "users": args.users,
        "dim": args.dim,
        "users_ready": users,
        "produce_s": round(produce_s, 1),
        "first_start_ready_s": round(first, 1),
        "after_sigkill_ready_s": round(again, 1),
        "records_per_s": round(args.users / again),
        "api_rss_mb": round(rss_mb),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"{users} users (dim {args.dim}) rebuilt from the compacted topic: first start ready "
            f"in {first:.1f}s, after SIGKILL ready in {again:.1f}s ({figures['records_per_s']} "
            f"records/s); replica RSS {rss_mb:.0f} MB; load {figures['load_avg_1m']}"
        )
    if users != args.users:
        raise SystemExit(f"expected {args.users} users, the replica holds {users}")


if __name__ == "__main__":
    main()
