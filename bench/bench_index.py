"""Index benchmark runner: audience queries over synthetic users and upsert throughput.

Runs :func:`index.bench.bench_index` for each requested dimension (64 and the
model's, read from ``--model``'s config.json) and distribution, prints a
summary, and writes every figure as JSON.

    .venv/bin/python bench/bench_index.py                         # 1M users, dim 64
    .venv/bin/python bench/bench_index.py --model DIR --distribution both --out index.json

``interest-stream bench index --json`` runs one configuration through the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.index import bench_index


def _model_dim(model: Path | None) -> int | None:
    if model is None:
        return None
    cfg = json.loads((model / "config.json").read_text())
    return int(cfg["dim"])


def _line(r: dict[str, Any]) -> str:
    a, p = r["audience"], r["params"]
    up = r["upsert"]["large"]
    upd = ", ".join(f"b{u['batch']}: {u['users_per_s']:,}/s" for u in up["update"])
    small = r["upsert"].get("small")
    small_txt = ""
    if small:
        small_txt = " | exact-index updates " + ", ".join(
            f"b{u['batch']}: {u['users_per_s']:,}/s" for u in small["update"]
        )
    st = a["structure"]
    return (
        f"{p['n_users']:,} users dim {p['dim']} {p['distribution']}: {st['kind']} "
        f"nlist={st['nlist']} nprobe={st['nprobe']} | audience k={a['k']} "
        f"p50 {a['index']['p50_ms']} ms p99 {a['index']['p99_ms']} ms recall {a['recall_at_k']} "
        f"(exact p50 {a['exact']['p50_ms']} ms p99 {a['exact']['p99_ms']} ms) | "
        f"fill {up['fill']['users_per_s']:,}/s | updates {upd}{small_txt}"
    )


def main() -> None:
    """Parse arguments, run, print and save."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--dims", default="64", help="comma-separated dimensions")
    p.add_argument("--model", type=Path, default=None, help="checkpoint: also bench its dim")
    p.add_argument("--distribution", choices=["clustered", "uniform", "both"], default="clustered")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--exact-queries", type=int, default=200)
    p.add_argument("--budget", type=float, default=3.0, help="seconds per update batch size")
    p.add_argument("--threads", type=int, default=1, help="FAISS threads for queries/upserts")
    p.add_argument("--build-threads", type=int, default=None, help="FAISS threads for the build")
    p.add_argument("--out", type=Path, default=None, help="write all figures here (JSON)")
    args = p.parse_args()
    dims = [int(d) for d in args.dims.split(",") if d.strip()]
    md = _model_dim(args.model)
    if md is not None and md not in dims:
        dims.append(md)
    dists = ["clustered", "uniform"] if args.distribution == "both" else [args.distribution]
    results = []
    for dist in dists:
        for dim in dims:
            r = bench_index(
                args.users, dim, n_queries=args.queries, exact_queries=args.exact_queries,
                distribution=dist, budget_s=args.budget, threads=args.threads,
                build_threads=args.build_threads,
            )  # fmt: skip
            results.append(r)
            print(_line(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(f"figures written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
