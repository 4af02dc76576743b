"""Occlusion explanations (streams/explain.py, models/occlusion.py) on a tiny trained model.

Contributions must be the score deltas of real re-encodes of the window without each
event, the exact long-path shortcut must equal ``encode_long`` of the shortened
history, the prior is the empty window's score, and the event whose removal changes the
score most comes first.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from model_helpers import random_histories, synthetic_events, tiny_encoder_config, tiny_train_config

from interest_stream import models
from interest_stream.core.events import Event, Interaction
from interest_stream.core.vectors import blend
from interest_stream.models import InterestModel
from interest_stream.models.occlusion import encode_variants_many
from interest_stream.models.short_variants import short_variants
from interest_stream.streams.explain import (
    Explainer,
    ExplainError,
    VectorScorer,
    encode_units,
    explain_window,
    occlusion_units,
)
from interest_stream.streams.window import BehaviorWindow, WindowConfig

TOL = 2e-4


@pytest.fixture(
    scope="module",
    params=[{"revisit_dim": 8, "trend": True, "long_half_life_hours": 0.5}, {"n_layers_long": 2}],
    ids=["one-layer-revisit-trend", "two-layer"],
)
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> InterestModel:
    enc = tiny_encoder_config(**request.param)
    cfg = tiny_train_config(encoder=enc, revisit_gain=0.5 if enc.revisit_dim else None)
    root = tmp_path_factory.mktemp("explain") / "model"
    models.train(synthetic_events(seed=5), root, cfg, progress=False)
    return InterestModel.load(root, device="cpu")


def _history(model: InterestModel, n: int, seed: int) -> list[Interaction]:
    items = [*model.item_ids[:30], "never-seen"]
    return random_histories(1, n, items, seed=seed, span_ms=2 * 3_600_000)[0]


def _without(h: list[Interaction], drop: set[int]) -> list[Interaction]:
    return [e for i, e in enumerate(h) if i not in drop]


def test_exact_long_occlusion_equals_reencodes(model: InterestModel) -> None:
    h = _history(model, 40, seed=11)
    drops = [[i] for i in range(len(h))] + [[], list(range(10)), list(range(len(h)))]
    _, fast = model.encode_variants([], [], h, drops)
    slow = model.encode_long([_without(h, set(d)) for d in drops])
    np.testing.assert_allclose(fast, slow, atol=TOL)


def test_batched_variants_with_the_older_group_equal_reencodes(model: InterestModel) -> None:
    """encode_variants_many: the older-events group (a prefix) through the exact formula
    too; every row equals encode_long / encode_short of the shortened window."""
    jobs, slow = [], []
    for seed, n in ((31, 45), (32, 9)):
        h = _history(model, n, seed=seed)
        short = model.short_window(h)
        long_drops = [[], *([i] for i in range(n - 6, n)), list(range(n - 6)), list(range(n))]
        short_drops = [[], [len(short) - 1]]
        jobs.append((short, short_drops, h, long_drops))
        slow.append((model.encode_short([_without(short, set(d)) for d in short_drops]),
                     model.encode_long([_without(h, set(d)) for d in long_drops])))  # fmt: skip
    for (s_fast, l_fast), (s_slow, l_slow) in zip(
        encode_variants_many(model, jobs), slow, strict=True
    ):
        np.testing.assert_allclose(s_fast, s_slow, atol=TOL)
        np.testing.assert_allclose(l_fast, l_slow, atol=TOL)


def test_lean_short_variants_equal_encode_short(model: InterestModel) -> None:
    """Windows of different lengths in one padded batch: every single-event drop, the
    whole and the empty window equal encode_short of the shortened window."""
    jobs, slow = [], []
    for seed, n in ((41, 12), (42, 3), (43, 1)):
        short = model.short_window(_history(model, n, seed=seed))
        drops = [[], *([i] for i in range(len(short))), list(range(len(short)))]
        jobs.append((short, drops))
        slow.append(model.encode_short([_without(short, set(d)) for d in drops]))
    np.testing.assert_allclose(short_variants(model, jobs), np.concatenate(slow), atol=TOL)


def test_screened_long_occlusion_is_exact_for_the_screened_events(model: InterestModel) -> None:
    """exact_events=M: M single-event rows equal the re-encodes (the M largest first-order
    changes), the whole window and the older group stay exact; M=None: every row."""
    n = 40
    h = _history(model, n, seed=44)
    singles = [[i] for i in range(n - 20, n)]
    long_drops = [[], *singles, list(range(n - 20)), list(range(n))]
    slow = model.encode_long([_without(h, set(d)) for d in long_drops])
    ((_, every),) = encode_variants_many(model, [([], [], h, long_drops)], None)
    np.testing.assert_allclose(every, slow, atol=TOL)
    ((_, screened),) = encode_variants_many(model, [([], [], h, long_drops)], 5)
    exact_rows = np.abs(screened - slow).max(axis=1) <= TOL
    assert exact_rows[[0, -2, -1]].all()
    if model.encoder.cfg.n_layers_long == 1:  # the exact formula's case
        assert int(exact_rows[1:-2].sum()) >= 5


@pytest.mark.parametrize("horizon", ["short", "long", "blend"])
def test_contributions_are_score_deltas_of_real_reencodes(
    model: InterestModel, horizon: str
) -> None:
    h = _history(model, 48, seed=12)
    start = len(h) - len(model.short_window(h))
    units, first = occlusion_units(len(h), start, horizon, long_events=15)
    variants = encode_units(model, h, start, units, horizon)
    rng = np.random.default_rng(7)
    targets = model.item_vectors()[rng.choice(len(model.item_ids), 4, replace=False)]
    weight = 0.6
    res = explain_window(variants, VectorScorer(horizon, weight), targets, top=len(units))

    def score(short_h: list[Interaction], long_h: list[Interaction]) -> np.ndarray:
        s = model.encode_short([short_h])
        lo = model.encode_long([long_h])
        user = {"short": s, "long": lo, "blend": blend(s, lo, weight)}[horizon]
        return (user.astype(np.float64) @ targets.T.astype(np.float64))[0]

    full = score(h[start:], h)
    prior = score([], [])
    for t in range(len(targets)):
        assert res[t]["score"] == pytest.approx(full[t], abs=TOL)
        assert res[t]["prior"] == pytest.approx(prior[t], abs=TOL)
        deltas = [e["delta"] for e in res[t]["events"]]
        assert deltas == sorted(deltas, reverse=True)  # largest contribution first
        z = sum(abs(e["delta"]) for e in res[t]["events"]) + abs(res[t]["prior"])
        assert sum(abs(e["share"]) for e in res[t]["events"]) + abs(
            res[t]["prior_share"]
        ) == pytest.approx(1.0, abs=1e-6)
        assert res[t]["prior_share"] == pytest.approx(res[t]["prior"] / z, rel=1e-6)
    # every unit's delta is the score change of a real re-encode without it
    for t in range(len(targets)):
        for e, unit in zip(res[t]["events"], _units_in_order(res[t], units, h), strict=True):
            drop = set(unit.indices)
            short_h = [x for i, x in enumerate(h) if i >= start and i not in drop]
            again = score(short_h, _without(h, drop))
            assert e["delta"] == pytest.approx(full[t] - again[t], abs=TOL)
    if horizon == "short":
        assert all(not u.group for u in units) and len(units) == len(h) - start
    else:
        assert first == min(start, len(h) - 15)
        assert units[-1].group and units[-1].indices == tuple(range(first))


def _units_in_order(res: dict, units: list, h: list[Interaction]) -> list:
    """The unit behind each listed event (events are matched by their index fields)."""
    out = []
    for e in res["events"]:
        if e.get("group"):
            out.append(next(u for u in units if u.group))
            continue
        out.append(
            next(
                u
                for u in units
                if not u.group
                and h[u.indices[0]][0] == e["item_id"]
                and h[u.indices[0]][2] == e["ts"]
                and h[u.indices[0]][1] == e["event_type"]
            )
        )
    return out


def test_the_event_that_moves_the_score_most_comes_first(model: InterestModel) -> None:
    """A window of one repeated item plus noise: that item's events lead its explanation."""
    rng = np.random.default_rng(3)
    items = model.item_ids[:30]
    favourite = items[4]
    base = 1_700_000_000_000
    h = []
    for i in range(20):
        item = favourite if i % 5 == 0 else items[int(rng.integers(5, 30))]
        h.append(Interaction(item, "purchase" if item == favourite else "view", base + i * 60_000))
    start = len(h) - len(model.short_window(h))
    units, _ = occlusion_units(len(h), start, "short", 50)
    variants = encode_units(model, h, start, units, "short")
    target = model.item_vectors()[model.item_index[favourite]][None, :]
    res = explain_window(variants, VectorScorer("short"), target, top=len(units))[0]
    scores = (
        model.item_vectors()[[model.item_index[favourite]]]
        @ model.encode_short([_without(h[start:], {j}) for j in range(len(h) - start)]).T
    )
    biggest = int(np.argmin(scores[0]))  # removing this event lowers the score most
    top = res["events"][0]
    assert (top["item_id"], top["ts"]) == (h[start + biggest][0], h[start + biggest][2])
    print(f"\ntop event {top['item_id']} ({top['event_type']}), share {top['share']:.3f}")


def test_explainer_caches_and_checks_targets(model: InterestModel) -> None:
    cfg = WindowConfig()
    w = BehaviorWindow("u1", cfg)
    for i, e in enumerate(_history(model, 30, seed=4)):
        w.apply(Event("u1", e[0], e[1], e[2]), "events.view", 0, i)
    ex = Explainer(lambda: model)
    targets = model.item_vectors()[:3]
    a = asyncio.run(ex.explain(w, targets, horizon="blend", top=3))
    b = asyncio.run(ex.explain(w, targets, horizon="blend", top=3))
    assert (ex.misses, ex.hits) == (1, 1)
    assert a == b and a["history_events"] == 30 and len(a["results"]) == 3
    with pytest.raises(ExplainError):
        asyncio.run(ex.explain(w, targets[:, :3], horizon="blend"))
    with pytest.raises(ExplainError):
        asyncio.run(ex.explain(w, targets, horizon="sideways"))
    ex.close()


def test_explainer_loads_its_own_encoder_once(model: InterestModel) -> None:
    """With a loader, the first explanation uses the shared encoder and starts one load;
    later ones use the loaded copy (same model version)."""
    calls: list[str] = []

    class Counting:
        def __init__(self, name: str) -> None:
            self.name, self.model_version, self.dim = name, model.model_version, model.dim

        def encode_variants(self, *args: object) -> tuple[np.ndarray, np.ndarray]:
            calls.append(self.name)
            return model.encode_variants(*args)  # type: ignore[arg-type]

    shared = Counting("shared")
    loads: list[int] = []

    def loader() -> Counting:
        loads.append(1)
        return Counting("own")

    w = BehaviorWindow("u2", WindowConfig())
    for i, e in enumerate(_history(model, 12, seed=6)):
        w.apply(Event("u2", e[0], e[1], e[2]), "events.view", 0, i)
    ex = Explainer(lambda: shared, cache_users=0, loader=loader)
    targets = model.item_vectors()[:2]
    asyncio.run(ex.explain(w, targets, horizon="short"))
    ex._pending_load.result(timeout=30)
    asyncio.run(ex.explain(w, targets, horizon="short"))
    asyncio.run(ex.explain(w, targets, horizon="short"))
    assert calls == ["shared", "own", "own"] and loads == [1]
    ex.close()


class _Batching:
    """The in-process model with the child process's batched call (``encode_variants_many``)."""

    def __init__(self, model: InterestModel) -> None:
        self.model, self.model_version, self.dim = model, model.model_version, model.dim
        self.calls: list[int] = []

    def encode_variants_many(self, jobs: list) -> list[tuple[np.ndarray, np.ndarray]]:
        self.calls.append(len(jobs))
        return encode_variants_many(self.model, jobs)

    def encode_variants(self, *args: object) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(1)
        return self.model.encode_variants(*args)  # type: ignore[arg-type]


def _window(model: InterestModel, user: str, n: int, seed: int) -> BehaviorWindow:
    w = BehaviorWindow(user, WindowConfig())
    for i, e in enumerate(_history(model, n, seed=seed)):
        w.apply(Event(user, e[0], e[1], e[2]), "events.view", 0, i)
    return w


def test_concurrent_explanations_are_batched_and_bounded(model: InterestModel) -> None:
    """Concurrent requests share one encoder call and give the answers they give alone;
    beyond ``max_pending`` waiting windows the explainer refuses at once (ExplainBusy)."""
    windows = [_window(model, f"b{i}", 10 + 7 * i, seed=20 + i) for i in range(5)]
    targets = model.item_vectors()[:3]
    enc = _Batching(model)
    ex = Explainer(lambda: enc, cache_users=0)

    async def all_at_once(explainer: Explainer) -> list:
        return await asyncio.gather(
            *(explainer.explain(w, targets, horizon="blend", top=50) for w in windows),
            return_exceptions=True,
        )

    together = asyncio.run(all_at_once(ex))
    assert enc.calls == [5] and ex.batches == 1
    alone = [asyncio.run(ex.explain(w, targets, horizon="blend", top=50)) for w in windows]
    assert enc.calls == [5, 1, 1, 1, 1, 1]
    for a, b in zip(together, alone, strict=True):
        for ra, rb in zip(a["results"], b["results"], strict=True):
            assert ra["score"] == pytest.approx(rb["score"], abs=TOL)
            assert [e["delta"] for e in ra["events"]] == pytest.approx(
                [e["delta"] for e in rb["events"]], abs=TOL
            )
    busy = Explainer(lambda: _Batching(model), cache_users=0, max_pending=2)
    got = asyncio.run(all_at_once(busy))
    assert [type(g).__name__ for g in got] == ["dict", "dict", *["ExplainBusy"] * 3]
    assert busy.rejected == 3
    ex.close()
    busy.close()


def test_explainer_gives_new_items_to_its_own_encoder(model: InterestModel) -> None:
    """New items' input rows reach the explanations' own encoder: those merged before it
    loads when it loads, later ones at once (models/extra_items.py on a real model)."""
    import copy

    from interest_stream.models.extra_items import update_in_process

    own_model = copy.deepcopy(model)  # the module's model keeps no extras

    class Own:
        model_version, dim = own_model.model_version, own_model.dim

        def update_extra_items(self, ids: list[str], inputs: np.ndarray) -> int:
            return update_in_process(own_model, ids, inputs)

        def encode_variants(self, *job: object) -> tuple[np.ndarray, np.ndarray]:
            return own_model.encode_variants(*job)  # type: ignore[arg-type]

    width = model.encoder.cfg.dim
    ex = Explainer(lambda: model, cache_users=0, loader=Own)
    ex.update_extra_items(["new-a"], np.full((1, width), 0.3, dtype=np.float32))
    ex.start()
    ex._pending_load.result(timeout=30)
    assert "new-a" in own_model._lookup and "new-a" not in model._lookup
    ex.update_extra_items(["new-b"], np.full((1, width), -0.3, dtype=np.float32))
    assert {"new-a", "new-b"} <= set(own_model._lookup)
    window = BehaviorWindow("u-new", WindowConfig())
    for i, item in enumerate([*model.item_ids[:5], "new-b"]):
        window.apply(Event(user_id="u-new", item_id=item, event_type="view", ts=1_000 * (i + 1)))
    targets = model.item_vectors()[:2]
    got = asyncio.run(ex.explain(window, targets, horizon="long", top=10))
    newest = [e for e in got["results"][0]["events"] if e.get("item_id") == "new-b"]
    assert newest and isinstance(ex._encoder(), Own)
    ex.close()
