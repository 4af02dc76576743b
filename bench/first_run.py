"""The demo's first run, measured: from the command to the first live vector (issue #16).

Runs ``interest-stream demo`` the way ``make demo`` does on a fresh machine, ``--runs``
times, each from an empty work folder (no model) and an empty broker data folder on a
free port (nothing listens there, so the demo starts its own Kafka), and times each
milestone of its output from the moment the command was launched. The load average
is noted at the start, at the first live vector and at the end of each run.

``--until live`` stops the demo (Ctrl-C) once the first vector is live; ``--until
full`` waits until the full model trained in the background is live too.

    .venv/bin/python -m bench.first_run --runs 3 --until live --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from interest_stream.core.kafka import free_port

MILESTONES = {
    "kafka_up_s": re.compile(r"^\[kafka\] up at"),
    "quick_model_s": re.compile(r"^\[model\] quick model \S+ ready"),
    "services_up_s": re.compile(r"^\[run\] worker pid"),
    "first_live_s": re.compile(r"^\[live\] first user vector live"),
    "full_trained_s": re.compile(r"^\[model\] full model trained in"),
    "full_live_s": re.compile(r"^\[model\] version \S+ live in the worker"),
}
_NOISE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_once(
    root: Path, until: str, full_train_seconds: float, timeout: float, keep: Path | None = None
) -> dict[str, Any]:
    """One demo run from scratch; the seconds to each milestone, load averages, noise lines.

    ``keep``: copy the run's logs (demo children, broker) there.
    """
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INTEREST_")},
        "INTEREST_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "INTEREST_KAFKA_DATA_DIR": str(root / "kafka-data"),
        "INTEREST_API_PORT": str(free_port()),
        "INTEREST_WORKER_WEB_PORT": str(free_port()),
    }
    for key in ("INTEREST_KAFKA_HOME", "INTEREST_DATA_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    cmd = [sys.executable, "-m", "interest_stream.cli", "demo", "--work-dir", str(root / "demo"),
           "--full-train-seconds", str(full_train_seconds), "--duration", "5"]  # fmt: skip
    out: dict[str, Any] = {"load_start": _load(), "noise": [], "lines": []}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)  # fmt: skip
    goal = "first_live_s" if until == "live" else "full_live_s"
    reached = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            at = round(time.monotonic() - t0, 1)
            line = line.rstrip("\n")
            out["lines"].append(f"{at:7.1f}s {line}")
            if _NOISE.search(line):
                out["noise"].append(line)
            for name, pattern in MILESTONES.items():
                if name not in out and pattern.search(line):
                    out[name] = at
                    if name == "first_live_s":
                        out["load_at_live"] = _load()
                    if name == goal:
                        reached.set()
        reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reached.wait(timeout)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # the demo stops everything it started
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    reader.join(timeout=10)
    out["exit_code"] = proc.returncode
    if keep is not None:
        shutil.copytree(root / "demo" / "logs", keep / "demo-logs", dirs_exist_ok=True)
        shutil.copytree(root / "kafka-data" / "logs", keep / "kafka-logs", dirs_exist_ok=True)
    out["load_end"] = _load()
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--runs``, ``--until live|full``, ``--full-train-seconds``, ``--json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--until", choices=("live", "full"), default="live")
    ap.add_argument("--full-train-seconds", type=float, default=300.0)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--keep-logs", type=Path, default=None, help="Copy each run's logs here.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
            keep = None if args.keep_logs is None else args.keep_logs / f"run{i + 1}"
            res = run_once(Path(tmp), args.until, args.full_train_seconds, args.timeout, keep)
        res["run"] = i + 1
        results.append(res)
        figures = {k: res.get(k) for k in (*MILESTONES, "load_start", "load_at_live")}
        print(f"run {i + 1}: {figures} noise lines {len(res['noise'])}", file=sys.stderr)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    doc = {"machine": machine, "until": args.until, "runs": results}
    if args.json:
        print(json.dumps(doc, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
