"""API benchmark runner: /interest and /recommendations under a loopback load generator.

Runs :func:`bench.api.bench_api` (server and load generator in
child processes), prints a summary and writes every figure as JSON.

    .venv/bin/python bench/bench_api.py                          # 100k users, 55k synthetic items
    .venv/bin/python bench/bench_api.py --model DIR --rate 500 --duration 20 --out api.json

``interest-stream bench api --json`` runs the same through the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.api import bench_api


def main() -> None:
    """Parse arguments, run, print and save."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=55_000, help="synthetic items (without --model)")
    p.add_argument("--dim", type=int, default=64, help="synthetic dimension (without --model)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint for the catalogue")
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--client", choices=["raw", "httpx"], default="raw")
    p.add_argument("--out", type=Path, default=None, help="write all figures here (JSON)")
    args = p.parse_args()
    r = bench_api(
        args.users, args.model, args.rate, args.duration, n_items=args.items, dim=args.dim,
        concurrency=args.concurrency, client=args.client,
    )  # fmt: skip
    for ep in ("interest", "recommendations"):
        fr, mt = r[ep]["fixed_rate"], r[ep]["max_throughput"]
        print(
            f"/{ep}: at {fr['target_rps']:.0f} req/s p50 {fr.get('p50_ms')} ms "
            f"p99 {fr.get('p99_ms')} ms ({fr['errors']} errors) | max "
            f"{mt.get('throughput_rps')} req/s (p50 {mt.get('p50_ms')} ms, "
            f"p99 {mt.get('p99_ms')} ms, {mt['concurrency']} connections) | server CPU "
            f"{mt.get('server_cpu_ms_per_request')} ms/request"
        )
    print(f"target p99 < 10 ms at {args.rate:.0f} req/s met: {r['targets']['met']}")
    if args.out:
        args.out.write_text(json.dumps(r, indent=2, default=str))
        print(f"figures written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
