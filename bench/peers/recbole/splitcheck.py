"""The split-equality check: RecBole's train/valid/test examples against ``loo_frame``'s roles.

Runs in both virtualenvs (the peer's has numpy 1.26 and pandas 2.2, the main one newer ones), so
it is plain Python on lists and imports nothing from the project.

An *example* is one next-item prediction: ``(user, target item, target seq, history items)``.
From the roles file (one line per event: ``seq, user_id, item_id, role``, written by
:mod:`bench.peers.recbole.export`) the examples RecBole must hold are:

* **test**: each user's test event; history = the user's previous ``max_len`` items (the
  validation item included, as the protocol says: the model sees every earlier event);
* **valid**: each user's validation event, history likewise;
* **train**: each train event with at least one earlier event of its user (RecBole's sequential
  augmentation makes one example per such event; a user's first event is history only).

:func:`compare` says whether RecBole's examples equal these, as multisets, split by split.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

__all__ = ["ROLES_HEADER", "Example", "compare", "expected_examples", "read_roles"]

ROLES_HEADER = ("seq", "user_id", "item_id", "role")
"""Columns of the roles file (tab-separated, one header line, rows in ``seq`` order)."""

Example = tuple[str, str, int, tuple[str, ...]]
"""``(user, target item, target seq, history items oldest first)``."""

Role = tuple[int, str, str, str]


def read_roles(path: str | Path) -> list[Role]:
    """The roles file as ``(seq, user_id, item_id, role)`` rows, in ``seq`` order."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = tuple(next(reader))
        if header != ROLES_HEADER:
            raise ValueError(f"{path}: header {header}, expected {ROLES_HEADER}")
        rows = [(int(s), u, i, r) for s, u, i, r in reader]
    return sorted(rows)


def expected_examples(roles: list[Role], max_len: int) -> dict[str, list[Example]]:
    """The examples each RecBole split must hold (see the module docstring)."""
    per_user: dict[str, list[Role]] = defaultdict(list)
    for row in sorted(roles):
        per_user[row[1]].append(row)
    out: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
    for user, rows in per_user.items():
        items = [r[2] for r in rows]
        for pos, (seq, _, item, role) in enumerate(rows):
            if pos == 0:
                if role != "train":
                    raise ValueError(f"user {user}: first event has role {role}")
                continue
            history = tuple(items[max(0, pos - max_len) : pos])
            out[role].append((user, item, seq, history))
    return out


def compare(
    expected: dict[str, list[Example]], observed: dict[str, list[Example]], show: int = 3
) -> dict[str, Any]:
    """Split by split, whether the observed examples equal the expected ones (as multisets).

    Returns:
        ``{"equal": bool, "train"|"valid"|"test": {"expected", "observed", "equal",
        "missing", "extra"}}``; ``missing`` / ``extra`` list up to ``show`` examples each.
    """
    out: dict[str, Any] = {}
    for split in ("train", "valid", "test"):
        want, got = Counter(expected.get(split, [])), Counter(observed.get(split, []))
        missing, extra = want - got, got - want
        out[split] = {
            "expected": sum(want.values()),
            "observed": sum(got.values()),
            "equal": not missing and not extra,
            "missing": [_short(e) for e in list(missing)[:show]],
            "extra": [_short(e) for e in list(extra)[:show]],
        }
    out["equal"] = all(out[s]["equal"] for s in ("train", "valid", "test"))
    return out


def _short(example: Example) -> str:
    user, item, seq, history = example
    tail = ",".join(history[-3:])
    return f"user={user} item={item} seq={seq} history=[{len(history)}: ...{tail}]"
