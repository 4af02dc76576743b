"""Event files: the canonical CSV/Parquet layout and converters for the shared data sets.

The canonical layout (docs/CONTRACTS.md) has the columns ``user_id,item_id,event_type,ts``
and optionally ``event_id``; ``ts`` is epoch ms or ISO-8601; gzip is allowed.
interest-stream also keeps two optional columns when a file has them:
``category`` (item category, used by evaluation and the dashboard) and
``rating`` (MovieLens).

:func:`read_events` reads any supported file into a :class:`pandas.DataFrame`
with those columns, sorted by (ts, original row order) and with ``ts`` in epoch
ms (int64), ids as strings and canonical event types. The layout is detected
from the file (``fmt="auto"``) or given:

* ``canonical`` — the layout above (a header row is required);
* ``taobao`` — the shared Taobao UserBehavior slices: no header,
  ``user_id,item_id,category_id,behavior_type,timestamp`` (seconds);
* ``movielens`` — MovieLens-100k ``u.data`` (tab-separated, seconds); every rating
  becomes a ``view`` event (ratings of 4-5 become ``fav``), the rating is kept.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from interest_stream.core.errors import EventFileError
from interest_stream.core.events import EVENT_TYPE_ALIASES, EVENT_TYPES, MIN_TS_MS

__all__ = [
    "CANONICAL_COLUMNS",
    "FileFormat",
    "detect_format",
    "movielens_items",
    "read_events",
    "shared_data_dir",
    "write_events",
]

log = logging.getLogger(__name__)

FileFormat = Literal["auto", "canonical", "taobao", "movielens"]
CANONICAL_COLUMNS = ("user_id", "item_id", "event_type", "ts")
OPTIONAL_COLUMNS = ("event_id", "category", "rating")

_TAOBAO_TYPES = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "purchase"}
MOVIELENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def shared_data_dir() -> Path:
    """The shared data folder: ``INTEREST_DATA_DIR``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("INTEREST_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for base in (here, Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return here.parent / "shared" / "data"


def _open_text_head(path: Path, n: int = 4096) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(n).decode("utf-8", errors="replace")
    except (OSError, EOFError) as exc:
        raise EventFileError(f"{path}: cannot read: {exc}") from exc


def detect_format(path: Path) -> FileFormat:
    """Guess the layout of an event file from its name and first line."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "canonical"
    if name.startswith("u.data"):
        return "movielens"
    head = _open_text_head(path)
    first = head.splitlines()[0] if head else ""
    if "user_id" in first and "item_id" in first:
        return "canonical"
    parts = first.split(",")
    if len(parts) == 5 and parts[3] in _TAOBAO_TYPES and parts[0].isdigit():
        return "taobao"
    parts = first.split("\t")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return "movielens"
    raise EventFileError(
        f"{path}: unknown layout; expected a header with user_id,item_id,event_type,ts "
        "(or a Taobao UserBehavior / MovieLens u.data file)"
    )


def _finish(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df["_row"] = np.arange(len(df), dtype=np.int64)
    df = df.sort_values(["ts", "_row"], kind="stable").drop(columns="_row")
    return df.reset_index(drop=True)


def _read_taobao(path: Path) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        header=None,
        names=["user_id", "item_id", "category", "behavior", "ts_s"],
        dtype={"user_id": str, "item_id": str, "category": str, "behavior": str},
    )
    bad = ~df["behavior"].isin(list(_TAOBAO_TYPES))
    if bad.any():
        raise EventFileError(
            f"{path}: {int(bad.sum())} rows with an unknown behaviour type, e.g. "
            f"{df.loc[bad, 'behavior'].iloc[0]!r}"
        )
    out = pd.DataFrame(
        {
            "user_id": df["user_id"],
            "item_id": df["item_id"],
            "event_type": df["behavior"].map(_TAOBAO_TYPES),
            "ts": df["ts_s"].astype(np.int64) * 1000,
            "category": df["category"],
        }
    )
    return out


def _read_movielens(path: Path) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        sep="\t",
        header=None,
        names=["user_id", "item_id", "rating", "ts_s"],
        dtype={"user_id": str, "item_id": str},
    )
    out = pd.DataFrame(
        {
            "user_id": df["user_id"],
            "item_id": df["item_id"],
            "event_type": np.where(df["rating"] >= 4, "fav", "view"),
            "ts": df["ts_s"].astype(np.int64) * 1000,
            "rating": df["rating"].astype(np.int64),
        }
    )
    items = path.parent / "u.item.gz"
    if items.exists():
        meta = movielens_items(path.parent)
        first_genre = meta.set_index("item_id")["genres"].str.split("|").str[0]
        out["category"] = out["item_id"].map(first_genre).fillna("unknown")
    return out


def _parse_ts_column(col: pd.Series, path: Path) -> pd.Series:
    if pd.api.types.is_integer_dtype(col):
        ts = col.astype(np.int64)
    elif pd.api.types.is_float_dtype(col):
        if col.isna().any() or not np.all(np.equal(np.mod(col, 1), 0)):
            raise EventFileError(f"{path}: column ts has empty or fractional values")
        ts = col.astype(np.int64)
    else:
        text = col.astype(str)
        numeric = pd.to_numeric(text, errors="coerce")
        parsed = pd.to_datetime(
            text.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601"
        )
        epoch = pd.Timestamp(0, tz="UTC")
        ms = ((parsed - epoch) // pd.Timedelta(milliseconds=1)).where(parsed.notna())
        ts_f = numeric.where(numeric.notna(), ms)
        if ts_f.isna().any():
            i = int(np.flatnonzero(ts_f.isna().to_numpy())[0])
            raise EventFileError(
                f"{path}: row {i + 1}: ts {text.iloc[i]!r} is neither ms nor ISO-8601"
            )
        ts = ts_f.astype(np.int64)
    if (ts < MIN_TS_MS).any():
        i = int(np.flatnonzero((ts < MIN_TS_MS).to_numpy())[0])
        raise EventFileError(
            f"{path}: row {i + 1}: ts {int(ts.iloc[i])} is before 1973; "
            "canonical files use epoch milliseconds"
        )
    return ts


def _read_canonical(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(
                path,
                dtype={
                    "user_id": str,
                    "item_id": str,
                    "event_type": str,
                    "event_id": str,
                    "category": str,
                },
                keep_default_na=False,
                na_values={"ts": [""], "rating": [""]},
            )
    except (OSError, ValueError) as exc:
        raise EventFileError(f"{path}: cannot read: {exc}") from exc
    missing = [c for c in CANONICAL_COLUMNS if c not in df.columns]
    if missing:
        raise EventFileError(
            f"{path}: missing columns {missing}; need user_id,item_id,event_type,ts"
        )
    for c in ("user_id", "item_id", "event_type"):
        df[c] = df[c].astype(str)
        empty = df[c].str.len() == 0
        if empty.any():
            i = int(np.flatnonzero(empty.to_numpy())[0])
            raise EventFileError(f"{path}: row {i + 1}: empty {c}")
    types = df["event_type"].str.strip().str.lower().replace(EVENT_TYPE_ALIASES)
    unknown = ~types.isin(list(EVENT_TYPES))
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise EventFileError(
            f"{path}: row {i + 1}: unknown event_type {df['event_type'].iloc[i]!r}"
        )
    df["event_type"] = types
    df["ts"] = _parse_ts_column(df["ts"], path)
    keep = list(CANONICAL_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in df.columns]
    out = df[keep].copy()
    if "event_id" in out.columns:
        ids = out["event_id"].astype(str)
        out["event_id"] = ids.where(~ids.isin(["", "nan", "None"]), None)
    return out


def read_events(path: str | Path, fmt: FileFormat = "auto") -> pd.DataFrame:
    """Read an event file into canonical columns, sorted by event time (stable).

    Args:
        path: CSV (optionally gzip) or Parquet file.
        fmt: Layout, or ``auto`` to detect it.

    Returns:
        A DataFrame with ``user_id, item_id, event_type, ts`` (+ optional
        ``event_id, category, rating``); ids are ``str``, ``ts`` is int64 ms.

    Raises:
        EventFileError: Missing file, unknown layout or a bad row (named).
    """
    p = Path(path)
    if not p.is_file():
        raise EventFileError(f"{p}: no such event file")
    layout = detect_format(p) if fmt == "auto" else fmt
    log.debug("reading %s as %s", p, layout)
    if layout == "taobao":
        df = _read_taobao(p)
    elif layout == "movielens":
        df = _read_movielens(p)
    elif layout == "canonical":
        df = _read_canonical(p)
    else:
        raise EventFileError(f"unknown event file format {layout!r}")
    return _finish(df, p)


def write_events(df: pd.DataFrame, path: str | Path) -> Path:
    """Write events in the canonical layout (CSV, gzip if the name ends in .gz, or Parquet)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cols = list(CANONICAL_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in df.columns]
    if p.name.endswith((".parquet", ".pq")):
        df[cols].to_parquet(p, index=False)
    else:
        df[cols].to_csv(p, index=False, compression="gzip" if p.name.endswith(".gz") else None)
    return p


def movielens_items(folder: str | Path) -> pd.DataFrame:
    """MovieLens-100k movies: ``item_id, title, genres`` (genres joined by ``|``)."""
    folder = Path(folder)
    path = folder / "u.item.gz"
    if not path.exists():
        path = folder / "u.item"
    if not path.exists():
        raise EventFileError(f"{folder}: no u.item(.gz)")
    rows = []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line in fh:
            parts = line.decode("latin-1").rstrip("\n").split("|")
            if len(parts) < 24:
                continue
            flags = parts[5:24]
            genres = [g for g, f in zip(MOVIELENS_GENRES, flags, strict=True) if f == "1"]
            rows.append((parts[0], parts[1], "|".join(genres) or "unknown"))
    return pd.DataFrame(rows, columns=["item_id", "title", "genres"])
