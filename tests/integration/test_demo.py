"""The demo's non-interactive mode, end to end against the session's real broker.

Two runs: one reusing a checkpoint (no training), and a first run from an empty work
folder, which goes live with a quick model, trains the full one in the background and
rolls it out by hot reload while events keep flowing. The second reports the time from
the command to the first live vector (``first_live_s``); the 90-second target is a
measurement (docs/RESULTS.md, "First run"), not an assertion: the time depends on the
machine's load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import TAOBAO_HISTORIES

from interest_stream.core.checkpoint import checkpoint_version
from interest_stream.streams.kafka_local.broker import free_port

pytestmark = pytest.mark.integration

# the demo's own output: progress lines, never a log line of a warning or an error
_LOG_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


def _demo(kafka_bootstrap: str, args: list[str], extra_env: dict[str, str]) -> Any:
    env = {
        **os.environ,
        "INTEREST_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "INTEREST_API_PORT": str(free_port()),
        "INTEREST_WORKER_WEB_PORT": str(free_port()),
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "interest_stream.cli", "demo", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )


def test_demo_duration_mode(kafka_bootstrap: str, tmp_path: Path) -> None:
    from model_helpers import tiny_train_config

    from interest_stream.core.eventfile import read_events
    from interest_stream.models import train

    model = tmp_path / "model"
    train(read_events(TAOBAO_HISTORIES).head(20_000), model, tiny_train_config(), progress=False)
    proc = _demo(
        kafka_bootstrap,
        [
            "--duration",
            "1",
            "--limit",
            "4000",
            "--rate",
            "4000",
            "--work-dir",
            str(tmp_path / "demo"),
        ],
        {"INTEREST_MODEL_DIR": str(model)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["replay"]["sent"] == 4000
    assert summary["freshness"]["freshness"]["samples"] > 0
    recs = summary["example_recommendations"]["items"]
    assert len(recs) == 5
    known = set(json.loads((model / "items.json").read_text()))
    assert all(r["item_id"] in known for r in recs)
    assert "[live] applied" in proc.stderr and "curl -s" in proc.stderr
    assert "[model] reusing the checkpoint" in proc.stderr and summary["full_model"] == "none"
    assert summary["first_live_s"] > 0


@pytest.mark.timeout(2700)
def test_demo_first_run_goes_live_then_rolls_out_the_full_model(
    kafka_bootstrap: str, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    from interest_stream.core.eventfile import read_events

    # the first 10,000 events in time (605 users): one epoch of the full model's fit and of
    # its refit (the first of each always runs, whatever the budget) ~20 s each, not ~40 s
    events = tmp_path / "events.csv"
    read_events(TAOBAO_HISTORIES).head(10_000).to_csv(events, index=False)
    work = tmp_path / "demo"
    args = ["--events", str(events), "--rate", "2000", "--work-dir", str(work)]
    t0 = time.monotonic()
    first = ["--duration", "3", "--limit", "6000", "--full-train-seconds", "20"]
    proc = _demo(kafka_bootstrap, [*args, *first], {})
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stderr
    summary = json.loads(proc.stdout)
    first_live = summary["first_live_s"]
    record_property("first_live_s", first_live)
    print(
        f"\ndemo first run: first live vector {first_live:.1f}s after the command "
        f"(whole run {wall:.0f}s, load average {os.getloadavg()})"
    )
    assert first_live > 0
    # went live with the quick model, then the full one replaced it without a restart
    quick = re.search(r"\[model\] quick model (\S+) ready", out)
    assert quick is not None, out[-3000:]
    assert f"[live] first user vector live in the API {first_live:.1f}s" in out
    assert f"(model {quick.group(1)})" in out
    full = summary["full_model_version"]
    assert summary["full_model"] == "live", out[-3000:]
    assert full != quick.group(1) and checkpoint_version(work / "model") == full
    assert re.search(rf"\[model\] full model trained in \d+s .*rolled out as version {full}", out)
    assert f"[model] version {full} live in the worker and the API" in out
    # events kept flowing: passes after the first one ran while the full model trained
    assert summary["replay"]["sent"] == 6000 and summary["events_sent"] > 6000
    assert not [line for line in out.splitlines() if _LOG_LINE.search(line)], out[-3000:]
    # a second run reuses the full model: no training at all
    again = _demo(kafka_bootstrap, [*args, "--duration", "0", "--limit", "500"], {})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[model] reusing the checkpoint" in again.stderr
    assert "[model] training" not in again.stderr
