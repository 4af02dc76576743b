"""The demo's non-interactive mode, end to end against the session's real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TAOBAO_HISTORIES

from interest_stream.streams.kafka_local.broker import free_port

pytestmark = pytest.mark.integration


def test_demo_duration_mode(kafka_bootstrap: str, tmp_path: Path) -> None:
    from model_helpers import tiny_train_config

    from interest_stream.core.eventfile import read_events
    from interest_stream.models import train

    model = tmp_path / "model"
    train(read_events(TAOBAO_HISTORIES).head(20_000), model, tiny_train_config(), progress=False)
    env = {
        "INTEREST_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "INTEREST_MODEL_DIR": str(model),
        "INTEREST_API_PORT": str(free_port()),
        "INTEREST_WORKER_WEB_PORT": str(free_port()),
        "PATH": "/usr/bin:/bin",
    }
    import os

    env = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, "-m", "interest_stream.cli", "demo", "--duration", "1",
         "--limit", "4000", "--rate", "4000", "--work-dir", str(tmp_path / "demo"), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["replay"]["sent"] == 4000
    assert summary["freshness"]["freshness"]["samples"] > 0
    recs = summary["example_recommendations"]["items"]
    assert len(recs) == 5
    known = set(json.loads((model / "items.json").read_text()))
    assert all(r["item_id"] in known for r in recs)
    assert "[live] applied" in proc.stderr and "curl -s" in proc.stderr
