"""Skewed-traffic generator and cost breakdown of ``bench pipeline --users``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.pipeline_zipf import ZipfTraffic, cost_breakdown


def _file() -> pd.DataFrame:
    rows = [(f"t{u}", f"i{u}-{k}", "view" if k % 2 else "cart", 1000 * k)
            for u in range(5) for k in range(u + 2)]  # fmt: skip
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])


def test_users_are_zipf_skewed_and_walk_their_template_in_order() -> None:
    t = ZipfTraffic(_file(), n_users=1000, s=1.1, seed=1)
    a = t.draw(20_000, 5_000, rate=1000.0)
    b = t.draw(5_000, 99_000, rate=1000.0)
    counts = a["user_id"].value_counts()
    assert counts.iloc[0] > 20 * counts.median()  # a heavy head
    assert a["user_id"].nunique() > 400  # and a long tail
    assert a["ts"].iloc[0] == 5_000 and a["ts"].iloc[1000] == 6_000
    # each user's events cycle through one template's items in order, across draws
    both = pd.concat([a, b])
    for _, g in list(both.groupby("user_id", sort=False))[:50]:
        tpl = g["item_id"].str.rsplit("-", n=1).str[0].unique()
        assert len(tpl) == 1
        ks = g["item_id"].str.rsplit("-", n=1).str[1].astype(int).to_numpy()
        size = int(tpl[0][1:]) + 2
        np.testing.assert_array_equal(ks, np.arange(len(ks)) % size)


def test_cost_breakdown_per_event() -> None:
    wb = {"interest_worker_events_applied_total": 100.0}
    wa = {
        "interest_worker_events_applied_total": 1100.0,
        "interest_worker_batch_apply_seconds_sum": 0.5,
        'interest_worker_stage_seconds_total{stage="changelog"}': 0.2,
        'interest_reencode_stage_seconds_total{stage="short"}': 0.1,
        'interest_reencode_stage_seconds_total{stage="submit"}': 0.05,
        'interest_reencode_stage_seconds_total{stage="records"}': 0.05,
        'interest_long_encodes_total{path="incremental"}': 7.0,
    }
    out = cost_breakdown(wb, wa, {"worker_loop_process": 1.0}, {"worker_loop_process": 2.0})
    assert out["applied"] == 1000
    st = out["stage_wall_us_per_event"]
    assert st["apply"] == 300.0 and st["changelog_produce_and_ack"] == 200.0
    assert st["short_encode"] == 100.0
    assert out["cpu_us_per_event"]["worker_loop_process"] == 1000.0
    assert out["cpu_us_per_event"]["consume_faust_other"] == 1000.0 - 400.0
    assert out["long_encodes"] == {"incremental": 7, "full": 0}
