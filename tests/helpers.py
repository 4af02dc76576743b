"""Helpers shared by tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import os

from interest_stream.eventfile import shared_data_dir
from interest_stream.settings import Settings

DATA = shared_data_dir()
TAOBAO_HISTORIES = DATA / "taobao-userbehavior" / "user_histories.csv.gz"
TAOBAO_WINDOW = DATA / "taobao-userbehavior" / "time_window.csv.gz"
MOVIELENS_DATA = DATA / "movielens-100k" / "u.data.gz"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess (worker, API) read these settings."""
    env = dict(os.environ)
    for name, value in settings.safe_dump().items():
        if value is None:
            continue
        if name in ("admin_token", "kafka_sasl_password"):
            secret = getattr(settings, name)
            value = secret.get_secret_value() if secret is not None else None
            if value is None:
                continue
        if isinstance(value, list):
            value = ",".join(value)
        env[f"INTEREST_{name.upper()}"] = str(value)
    return env
