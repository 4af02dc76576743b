"""Short vs long: a real Taobao user plus an injected burst of another category.

A small model is trained (fixed seed) on the shared Taobao ``user_histories``.
For real users with a long history concentrated in a few categories, a run of
views of popular items from a category they never touched is appended. The
short-term vector must follow the burst (top-20 items mostly from the new
category) while the long-term vector stays with the user's old categories.
No Kafka needed; the first 300 users of the file and a small model keep it to
about a minute on two CPU cores.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interest_stream import models
from interest_stream.core.eventfile import read_events, shared_data_dir
from interest_stream.core.events import Interaction
from interest_stream.models import InterestModel
from interest_stream.models.checkpoint import load_item_meta

pytestmark = pytest.mark.slow

BURST = 15
USERS = 300
TOP = 20


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    path = shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
    df = read_events(path)
    df = df[(df["ts"] >= 1_511_539_200_000) & (df["ts"] < 1_512_316_800_000)]
    users = sorted(df["user_id"].unique())[:USERS]  # the first users by id: a third of the file
    return df[df["user_id"].isin(users)]


@pytest.fixture(scope="module")
def trained(events: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("burst") / "model"
    # A small model (32-d, one short layer, 1,024 sampled negatives): the behaviour
    # tested does not depend on its size.
    cfg = models.TrainConfig(
        encoder=models.EncoderConfig(dim=32, d_model=32, n_layers_short=1),
        epochs=2,
        batch_size=1024,
        lr=5e-3,
        seed=0,
        cutoff_quantile=1.0,
        val_fraction=0.0,
        refit=False,
        n_negatives=1024,
        rerank=False,
        device="cpu",
    )
    models.train(events, out, cfg, progress=False)
    return out


def _concentrated_users(events: pd.DataFrame, n: int) -> list[str]:
    """Users with >= 100 events whose top three categories hold >= 60% of them."""
    out = []
    for user, g in events.groupby("user_id", sort=True):
        if len(g) < 100:
            continue
        top3 = g["category"].value_counts().iloc[:3].sum()
        if top3 / len(g) >= 0.6:
            out.append(str(user))
        if len(out) == n:
            break
    return out


def _burst(
    events: pd.DataFrame, history: list[Interaction], user_cats: set[str], vocab: set[str]
) -> tuple[str, list[Interaction]]:
    """Views of the most popular items of the most popular category the user never touched."""
    known = events[events["item_id"].isin(vocab)]
    cat_counts = known["category"].value_counts()
    new_cat = next(
        str(c)
        for c in cat_counts.index
        if c not in user_cats
        and known.loc[known["category"] == c, "item_id"].nunique() >= 3 * BURST
    )
    items = known[known["category"] == new_cat]["item_id"].value_counts().index[:BURST]
    t = history[-1].ts
    return new_cat, [Interaction(str(i), "view", t + 60_000 * (k + 1)) for k, i in enumerate(items)]


def _top_categories(
    vec: np.ndarray, item_vecs: np.ndarray, ids: list[str], cat_of: dict[str, str]
) -> list[str]:
    top = np.argsort(-(item_vecs @ vec))[:TOP]
    return [cat_of.get(ids[i], "?") for i in top]


def test_short_follows_the_burst_long_keeps_the_history(
    events: pd.DataFrame, trained: Path
) -> None:
    model = InterestModel.load(trained, device="cpu")
    meta = load_item_meta(trained)
    cat_of = {i: str(m.get("category")) for i, m in meta.items()}
    item_vecs = model.item_vectors()
    vocab = set(model.item_ids)
    users = _concentrated_users(events, 5)
    assert users, "no user with a long, concentrated history"
    rows = []
    for user in users:
        g = events[events["user_id"] == user]
        history = [
            Interaction(str(i), str(t), int(s))
            for i, t, s in zip(g["item_id"], g["event_type"], g["ts"], strict=True)
        ]
        user_cats = set(g["category"].astype(str))
        new_cat, burst = _burst(events, history, user_cats, vocab)
        full = history + burst
        short = model.encode_short([model.short_window(full)])[0]
        long = model.encode_long([full[-200:]])[0]
        s_cats = _top_categories(short, item_vecs, model.item_ids, cat_of)
        l_cats = _top_categories(long, item_vecs, model.item_ids, cat_of)
        short_new = sum(c == new_cat for c in s_cats) / TOP
        long_old = sum(c in user_cats for c in l_cats) / TOP
        long_new = sum(c == new_cat for c in l_cats) / TOP
        rows.append(
            (user, new_cat, short_new, long_old, long_new, Counter(g["category"]).most_common(3))
        )
    report = "\n".join(
        f"user {u}: burst category {c}: short top-{TOP} new {s:.0%}, long top-{TOP}"
        f" old {lo:.0%} / new {ln:.0%}; history top categories {h}"
        for u, c, s, lo, ln, h in rows
    )
    print(report)
    for _u, _c, short_new, long_old, long_new, _h in rows:
        assert short_new > 0.5, report
        assert long_old > 0.5, report
        assert long_new < short_new, report
