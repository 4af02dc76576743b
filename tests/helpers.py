"""Helpers shared by tests (import as ``from helpers import ...``)."""

from __future__ import annotations

from interest_stream.core.eventfile import shared_data_dir
from interest_stream.procs import settings_env

DATA = shared_data_dir()
TAOBAO_HISTORIES = DATA / "taobao-userbehavior" / "user_histories.csv.gz"
TAOBAO_WINDOW = DATA / "taobao-userbehavior" / "time_window.csv.gz"
MOVIELENS_DATA = DATA / "movielens-100k" / "u.data.gz"

__all__ = ["DATA", "MOVIELENS_DATA", "TAOBAO_HISTORIES", "TAOBAO_WINDOW", "settings_env"]
