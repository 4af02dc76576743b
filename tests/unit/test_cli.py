"""The console script: one root, meaningful exit codes, one-line errors, mounted model verbs."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from helpers import DATA

from interest_stream.cli import EXIT_CONFIG, EXIT_INPUT, main

ML = DATA / "movielens-100k" / "u.data.gz"


def test_every_documented_verb_is_there() -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for verb in (
        "kafka",
        "topics",
        "replay",
        "worker",
        "serve",
        "train",
        "evaluate",
        "bench",
        "demo",
        "config",
    ):
        assert f"  {verb} " in res.output
    bench = CliRunner().invoke(main, ["bench", "--help"])
    for verb in ("encoder", "ingest", "pipeline", "index", "api"):
        assert f"  {verb} " in bench.output


def test_model_verb_error_is_one_line_with_input_exit_code(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    res = CliRunner().invoke(
        main, ["evaluate", "--events", str(ML), "--model", str(empty), "--quiet"]
    )
    assert res.exit_code == EXIT_INPUT
    assert res.stderr.startswith("error: ") and "config.json" in res.stderr
    assert "Traceback" not in res.output + res.stderr


def test_model_verb_error_as_json(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main, ["evaluate", "--events", str(ML), "--model", str(tmp_path), "--quiet", "--json"]
    )
    assert res.exit_code == EXIT_INPUT
    err = json.loads(res.stderr)
    assert err["type"] == "CheckpointError" and "config.json" in err["error"]


def test_bad_setting_is_a_config_error(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("INTEREST_FLUSH_MS", "-5")
        res = CliRunner().invoke(main, ["config", "--json"])
    finally:
        mp.undo()
    assert res.exit_code == EXIT_CONFIG
    assert "flush_ms" in res.stderr.lower()
