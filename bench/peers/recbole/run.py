"""Driver: RecBole SASRec / GRU4Rec and interest-stream on one leave-one-out split, one table.

Run from the repository root with the MAIN virtualenv's python::

    .venv/bin/python -m bench.peers.recbole --budget-minutes 10 --datasets movielens,taobao

Per data set: export ``loo_frame``'s split to RecBole atomic files (:mod:`.export`); run
:mod:`.peer` in RecBole's own virtualenv (:mod:`.venv`, built on first use), which refuses to
train unless RecBole's split equals ours; train and evaluate the product with the same budget
(:mod:`.ours`). Prints the markdown table and writes it, with a JSON of every figure, the
commands and the machine's load, to ``--out``. Exit 0 when every part ran, 3 when a split
differs (nothing is reported for that data set), 1 on another failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.peers.recbole.export import export_atomic
from bench.peers.recbole.ours import DEFAULT_FLAGS, run_ours
from bench.peers.recbole.report import LoadSampler, machine, markdown_table
from bench.peers.recbole.venv import ROOT, ensure_peer_venv
from interest_stream.core.eventfile import read_events, shared_data_dir

__all__ = ["DATASETS", "main"]

DATASETS = {
    "movielens": "movielens-100k/u.data.gz",
    "taobao": "taobao-userbehavior/user_histories.csv.gz",
}
"""Data set name -> event file under the shared data folder."""
PEER_SCRIPT = Path(__file__).resolve().with_name("peer.py")
EXIT_SPLIT_DIFFERS = 3
log = logging.getLogger("bench.peers.recbole")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peers.recbole",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--datasets", default="movielens,taobao", help="Comma-separated: "
                   + ", ".join(DATASETS))  # fmt: skip
    p.add_argument("--budget-minutes", type=float, default=15.0,
                   help="Wall-clock training budget per model (ours: --max-minutes).")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="Seed of every model (printed).")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every model.")
    p.add_argument("--models", default="SASRec,GRU4Rec", help="RecBole models.")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--ours-flags", action="append", default=[], metavar="NAME=FLAGS",
                   help="Replace a data set's train flags, e.g. 'movielens=--trend'.")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None, help="Shared data folder.")
    p.add_argument("--out", type=Path, default=None,
                   help="Results folder (default build/peers/results/<UTC time>).")  # fmt: skip
    p.add_argument("--torch", choices=("auto", "main", "pip"), default="auto",
                   help="Peer torch: the main virtualenv's (main) or pip's (pip).")  # fmt: skip
    p.add_argument("--max-epochs", type=int, default=300, help="RecBole epoch cap.")
    p.add_argument("--stopping-step", type=int, default=10,
                   help="RecBole: epochs without a better validation NDCG@10.")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=2048, help="RecBole training batch.")
    p.add_argument("--alongside", action="store_true",
                   help="Train ours while the peers train (same load for both).")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1,
                   help="Data sets run at once (each runs its models in turn).")  # fmt: skip
    return p.parse_args(argv)


def run_peers(args: argparse.Namespace, python: Path, data_root: Path, name: str) -> dict[str, Any]:
    """RecBole in its virtualenv on the exported data set; its result JSON (+ exit code)."""
    out = args.out / f"peers-{name}.json"
    cmd = [
        str(python), str(PEER_SCRIPT), "--data-path", str(data_root), "--dataset", name,
        "--out", str(out), "--work", str(args.out / "recbole-work"), "--models", args.models,
        "--budget-minutes", f"{args.budget_minutes:g}", "--seed", str(args.seed),
        "--threads", str(args.threads), "--max-epochs", str(args.max_epochs),
        "--stopping-step", str(args.stopping_step), "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    log_file = args.out / f"peers-{name}.log"
    log.info("%s: RecBole %s (log %s)", name, args.models, log_file)
    with log_file.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result["command"] = " ".join(cmd)
    result["exit_code"] = code
    return result


def _flags(args: argparse.Namespace) -> dict[str, str]:
    flags = dict(DEFAULT_FLAGS)
    for item in args.ours_flags:
        name, sep, value = item.partition("=")
        if not sep or name not in DATASETS:
            raise SystemExit(f"--ours-flags: expected NAME=FLAGS with NAME in {list(DATASETS)}")
        flags[name] = value
    return flags


def _ours(args: argparse.Namespace, name: str, events_file: Path, users: int) -> dict[str, Any]:
    log.info("%s: interest-stream train/evaluate --protocol loo", name)
    ours = run_ours(events_file, name, args.out, args.budget_minutes, _flags(args)[name],
                    args.threads)  # fmt: skip
    split = ours.get("split") or {}
    ranked = split.get("test_users", split.get("users"))
    ours["users_match_export"] = ranked is None or ranked == users
    if not ours["users_match_export"]:
        log.warning("%s: evaluate ranked %s users, the export has %d", name, ranked, users)
    return ours


def run_dataset(args: argparse.Namespace, name: str, python: Path | None) -> dict[str, Any]:
    """Export, then peers and ours (in turn, or side by side with ``--alongside``)."""
    events_file = (args.data_dir or shared_data_dir()) / DATASETS[name]
    data_root = args.out / "data"
    export = export_atomic(read_events(events_file), data_root, name)
    log.info("%s: %d events, %d users, %d items -> %s", name, export.events, export.users,
             export.items, export.inter_file)  # fmt: skip
    result: dict[str, Any] = {"events_file": str(events_file), "export": export.as_dict()}
    with ThreadPoolExecutor(max_workers=1) as pool:
        ours = None
        if not args.skip_ours and args.alongside:
            ours = pool.submit(_ours, args, name, events_file, export.users)
        if python is not None:
            peers = run_peers(args, python, data_root, name)
            result["peers"] = peers
            if peers["exit_code"] not in (0, EXIT_SPLIT_DIFFERS):
                raise RuntimeError(f"{name}: the peer run failed (exit {peers['exit_code']}); "
                                   f"see {args.out / f'peers-{name}.log'}")  # fmt: skip
            checks = [m.get("split_check", {}).get("equal")
                      for m in peers.get("models", {}).values()]  # fmt: skip
            result["split_equal"] = bool(checks) and all(checks)
            if peers["exit_code"] == EXIT_SPLIT_DIFFERS or not result["split_equal"]:
                log.error("%s: RecBole's split differs from loo_frame's: not reported", name)
                result["split_equal"] = False
                return result
        if not args.skip_ours:
            result["ours"] = ours.result() if ours else _ours(args, name, events_file,
                                                              export.users)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}; known: {list(DATASETS)}")
    started = dt.datetime.now(dt.UTC)
    args.out = (args.out or ROOT / "build" / "peers" / "results"
                / started.strftime("%Y%m%dT%H%M%SZ")).resolve()  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    log.info("seed %d, budget %g min, %d threads, out %s", args.seed, args.budget_minutes,
             args.threads, args.out)  # fmt: skip
    python = None if args.skip_peers else ensure_peer_venv(args.torch)
    results: dict[str, Any] = {"run": {
        "command": " ".join([Path(sys.executable).name, "-m", "bench.peers.recbole",
                             *(argv if argv is not None else sys.argv[1:])]),
        "budget_minutes": args.budget_minutes, "seed": args.seed, "threads": args.threads,
        "started_utc": started.isoformat(timespec="seconds"), "machine": machine(),
    }, "datasets": {}}  # fmt: skip
    sampler = LoadSampler().start()
    code = 0
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(lambda n: (n, run_dataset(args, n, python)), names))
        for name, res in done:
            if res.get("split_equal") is False:
                code = EXIT_SPLIT_DIFFERS
                results.setdefault("refused", {})[name] = res
                continue
            results["datasets"][name] = res
    finally:
        results["run"]["load"] = sampler.stop()
        results["run"]["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        results["run"]["machine_end"] = machine()
        (args.out / "peers.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown_table(results)
    (args.out / "peers.md").write_text(f"`{results['run']['command']}`\n\n{table}")
    print(table)
    print(f"written: {args.out / 'peers.md'}, {args.out / 'peers.json'}")
    return code
