"""Settings from the environment and config file; event files in every supported layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import MOVIELENS_DATA, TAOBAO_HISTORIES

from interest_stream.core.errors import ConfigError, EventFileError
from interest_stream.core.eventfile import read_events, write_events
from interest_stream.core.settings import load_settings, settings_table


def test_env_and_file_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "interest.toml"
    cfg.write_text("[interest]\napi_port = 9100\nbatch_max = 77\n")
    monkeypatch.setenv("INTEREST_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("INTEREST_API_PORT", "9200")
    monkeypatch.setenv("INTEREST_EVENT_TOPICS", "a.events.view, b.events.cart")
    s = load_settings()
    assert s.api_port == 9200  # env beats file
    assert s.batch_max == 77  # file beats default
    assert s.event_topics == ("a.events.view", "b.events.cart")
    assert load_settings(api_port=9300).api_port == 9300  # explicit beats env


def test_encode_process_is_tri_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto = child process unless the model runs on a GPU; true/false/1/0 force it."""
    for raw, expected in (("true", True), ("1", True), ("off", False), ("FALSE", False)):
        monkeypatch.setenv("INTEREST_ENCODE_PROCESS", raw)
        assert load_settings().use_encode_process() is expected, raw
    monkeypatch.setenv("INTEREST_ENCODE_PROCESS", "auto")
    monkeypatch.setenv("INTEREST_DEVICE", "cuda")
    assert load_settings().use_encode_process() is False
    monkeypatch.setenv("INTEREST_DEVICE", "cpu")
    assert load_settings().use_encode_process() is True
    monkeypatch.setenv("INTEREST_ENCODE_PROCESS", "sometimes")
    with pytest.raises(ConfigError, match="INTEREST_ENCODE_PROCESS"):
        load_settings()


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTEREST_BATCH_MAX", "0")
    with pytest.raises(ConfigError, match="INTEREST_BATCH_MAX"):
        load_settings()


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTEREST_ADMIN_TOKEN", "s3cret-token")
    s = load_settings()
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in str(s.safe_dump()) and "s3cret-token" not in repr(s)


def test_settings_table_lists_every_setting() -> None:
    table = settings_table()
    for name in ("INTEREST_KAFKA_BOOTSTRAP", "INTEREST_MODEL_DIR", "INTEREST_ADMIN_TOKEN"):
        assert f"`{name}`" in table


def test_taobao_and_movielens_converters() -> None:
    tb = read_events(TAOBAO_HISTORIES)
    assert len(tb) == 84_287 and tb["user_id"].nunique() == 814
    assert tb["event_type"].value_counts().to_dict() == {
        "view": 75_693, "cart": 4_494, "fav": 2_351, "purchase": 1_749,
    }  # fmt: skip
    assert tb["ts"].is_monotonic_increasing
    ml = read_events(MOVIELENS_DATA)
    assert len(ml) == 100_000 and ml["user_id"].nunique() == 943
    assert set(ml["event_type"]) == {"view", "fav"}


def test_canonical_round_trip_csv_gz_and_parquet(tmp_path: Path) -> None:
    tb = read_events(TAOBAO_HISTORIES).head(500)
    for name in ("ev.csv", "ev.csv.gz", "ev.parquet"):
        back = read_events(write_events(tb, tmp_path / name))
        pd.testing.assert_frame_equal(back.reset_index(drop=True), tb.reset_index(drop=True))


def test_canonical_iso_ts_and_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "iso.csv"
    p.write_text(
        "user_id,item_id,event_type,ts,event_id\n"
        "u1,i1,pv,2017-11-25T00:00:00Z,e1\n"
        "u1,i2,buy,1511568000001,\n"
    )
    df = read_events(p)
    assert df["ts"].tolist() == [1_511_568_000_000, 1_511_568_000_001]
    assert df["event_type"].tolist() == ["view", "purchase"]
    assert df["event_id"].tolist()[0] == "e1" and df["event_id"].isna().tolist()[1]
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,event_type,ts\nu1,i1,hover,1511568000000\n")
    with pytest.raises(EventFileError, match="row 1: unknown event_type 'hover'"):
        read_events(bad)
    secs = tmp_path / "secs.csv"
    secs.write_text("user_id,item_id,event_type,ts\nu1,i1,view,1511568000\n")
    with pytest.raises(EventFileError, match="milliseconds"):
        read_events(secs)
    with pytest.raises(EventFileError, match="no such event file"):
        read_events(tmp_path / "missing.csv")
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    with pytest.raises(EventFileError, match="unknown layout"):
        read_events(odd)


def test_readme_settings_table_is_current() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table() in readme, "run `interest-stream config --markdown` into README.md"
