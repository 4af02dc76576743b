"""Export the leave-one-out split to RecBole atomic files (runs in the main virtualenv).

:func:`export_atomic` writes, for one data set, a RecBole data folder ``<root>/<name>/``:

* ``<name>.inter`` -- ``user_id:token  item_id:token  timestamp:float``, one line per event
  that :func:`interest_stream.models.loo.loo_frame` keeps, in its order; the *timestamp is
  loo_frame's tie-free ordinal* ``seq``, so RecBole's time ordering (``order: TO``) is exactly
  ours and its leave-one-out split (``LS: valid_and_test``) takes the same last two events;
* ``roles.tsv`` -- ``seq, user_id, item_id, role`` for every line, read by the split check
  (:mod:`bench.peers.recbole.splitcheck`) inside the peer virtualenv.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.peers.recbole.splitcheck import ROLES_HEADER
from interest_stream.models.loo import loo_frame

__all__ = ["INTER_HEADER", "ExportInfo", "export_atomic"]

INTER_HEADER = ("user_id:token", "item_id:token", "timestamp:float")
"""Header of the ``.inter`` file (RecBole's ``field:type`` columns)."""

FLOAT32_EXACT = 1 << 24
"""RecBole keeps float fields as float32: every ``seq`` must stay below 2**24 to be exact."""


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_atomic` wrote."""

    name: str
    folder: str
    inter_file: str
    roles_file: str
    events: int
    users: int
    items: int
    train_events: int
    inter_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_atomic(
    events: pd.DataFrame, root: str | Path, name: str, min_events: int = 3
) -> ExportInfo:
    """Write ``<root>/<name>/<name>.inter`` and ``roles.tsv`` from ``loo_frame(events)``.

    Args:
        events: Canonical events (``read_events``), the whole file.
        root: RecBole's ``data_path``.
        name: Data set name (RecBole's ``dataset``; not ``ml-100k``, which RecBole special-cases).
        min_events: Passed to :func:`loo_frame`.

    Raises:
        ValueError: An id holds a tab or a line break, or too many events for float32 ``seq``.
    """
    frame = loo_frame(events, min_events)
    if len(frame) >= FLOAT32_EXACT:
        raise ValueError(f"{len(frame)} events: seq would not be exact as RecBole's float32")
    users = frame["user_id"].astype(str).to_numpy()
    items = frame["item_id"].astype(str).to_numpy()
    for label, ids in (("user_id", users), ("item_id", items)):
        if any(("\t" in s) or ("\n" in s) or ("\r" in s) or s == "" for s in ids):
            raise ValueError(f"a {label} is empty or holds a tab or line break")
    seq = frame["seq"].to_numpy()
    role = frame["role"].astype(str).to_numpy()
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    inter = folder / f"{name}.inter"
    inter_text = "\t".join(INTER_HEADER) + "\n"
    inter_text += "".join(f"{u}\t{i}\t{s}\n" for u, i, s in zip(users, items, seq, strict=True))
    inter.write_text(inter_text)
    roles = folder / "roles.tsv"
    rows = zip(seq, users, items, role, strict=True)
    roles.write_text(
        "\t".join(ROLES_HEADER) + "\n" + "".join(f"{s}\t{u}\t{i}\t{r}\n" for s, u, i, r in rows)
    )
    return ExportInfo(
        name=name,
        folder=str(folder),
        inter_file=str(inter),
        roles_file=str(roles),
        events=len(frame),
        users=int(frame["user_id"].nunique()),
        items=int(frame["item_id"].nunique()),
        train_events=int((frame["role"] == "train").sum()),
        inter_sha256=hashlib.sha256(inter_text.encode()).hexdigest(),
    )
