"""The compressed item scan answers exactly what the float32 search answers."""

from __future__ import annotations

import numpy as np
import pytest

from interest_stream.core.new_items import ItemVectorRecord
from interest_stream.index import ItemIndex
from interest_stream.index.item_scan import SCAN_MIN_ROWS, ItemScan, wanted_scan

SEED = 13


def catalogue(n: int = 6000, learned: int = 16, codes: int = 48) -> np.ndarray:
    """Item vectors shaped like a revisit checkpoint's: clustered learned coordinates and
    random fixed codes (the part no clustering captures)."""
    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((40, learned))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, learned))
    code = rng.standard_normal((n, codes)) / np.sqrt(codes)
    return np.hstack([x, code]).astype(np.float32)


def users(x: np.ndarray, m: int = 60) -> np.ndarray:
    """Queries as the encoder makes them: a learned direction plus a large revisit sum."""
    rng = np.random.default_rng(SEED + 1)
    out = rng.standard_normal((m, x.shape[1])).astype(np.float32)
    for q in out:
        touched = rng.choice(len(x), 8, replace=False)
        q[16:] = 50.0 * x[touched, 16:].sum(axis=0)
    return out


@pytest.mark.parametrize("kind", ["sq8", "fp16"])
def test_scan_equals_exact_search(kind: str) -> None:
    print(f"seed {SEED}")
    x = catalogue()
    scan = ItemScan(x, kind)
    rng = np.random.default_rng(SEED + 2)
    for q in users(x):
        exact = x @ q
        for k in (1, 10, 50):
            skip = set(rng.choice(len(x), 5, replace=False).tolist()) | {int(np.argmax(exact))}
            got = scan.search(q, k, skip)
            assert got is not None
            masked = exact.copy()
            masked[list(skip)] = -np.inf
            want = np.argsort(-masked, kind="stable")[:k]
            assert got[0].tolist() == want.tolist()
            np.testing.assert_allclose(got[1], exact[want], rtol=1e-5, atol=1e-4)
    st = scan.stats()
    assert st["searches"] == 180 and st["fallbacks"] == 0
    assert st["code_bytes"] == len(x) * x.shape[1] * (1 if kind == "sq8" else 2)


def test_ties_fall_back_to_the_float32_index() -> None:
    x = np.ones((3000, 8), dtype=np.float32)  # every score ties: the bound cannot settle
    scan = ItemScan(x, "sq8")
    assert scan.search(np.ones(8, np.float32), 10) is None
    assert scan.stats()["fallbacks"] == 1
    items = ItemIndex([f"i{j}" for j in range(3000)], x, scan="sq8")
    hits = items.search(np.ones(8, np.float32), 10)
    assert len(hits) == 10 and all(s == pytest.approx(8.0) for _i, s in hits)


def test_item_index_scan_equals_flat_with_new_items_and_exclusions() -> None:
    x = catalogue(3000)
    ids = [f"i{j}" for j in range(len(x))]
    flat = ItemIndex(ids, x, model_version="m", scan="flat")
    scanned = ItemIndex(ids, x, model_version="m", scan="sq8")
    assert scanned.stats()["scan"]["kind"] == "sq8" and flat.stats()["scan"]["kind"] == "flat"
    queries = users(x, 20)
    # items born after the checkpoint: one that beats every catalogue item for query 0
    top = (queries[0] / np.linalg.norm(queries[0]) * 50).astype(np.float32)
    new = [ItemVectorRecord("n0", "m", 1, top), ItemVectorRecord("n1", "m", 1, x[7] * 0.5)]
    for index in (flat, scanned):
        assert index.apply_new_items(new) == 2
    for j, q in enumerate(queries):
        for exclude in (None, {"i5", "n1", ids[int(np.argmax(x @ q))]}):
            want = flat.search(q, 12, exclude=exclude)
            got = scanned.search(q, 12, exclude=exclude)
            assert [i for i, _ in got] == [i for i, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
        if j == 0:
            assert scanned.search(q, 3)[0][0] == "n0"
    for index in (flat, scanned):  # withdrawn: gone from both structures
        index.apply_new_items([ItemVectorRecord("n0", "m", 2, None)])
    got, want = scanned.search(queries[0], 3), flat.search(queries[0], 3)
    assert "n0" not in [i for i, _ in got] and [i for i, _ in got] == [i for i, _ in want]


def test_wanted_scan() -> None:
    assert wanted_scan("auto", SCAN_MIN_ROWS) == "sq8"
    assert wanted_scan("auto", SCAN_MIN_ROWS - 1) == "flat"
    assert wanted_scan("fp16", 10) == "fp16"
    with pytest.raises(ValueError, match="item scan"):
        wanted_scan("ivf", 10)


def test_search_rows_are_the_scans_rows_until_new_items_arrive() -> None:
    x = catalogue(3000)
    ids = [f"i{j}" for j in range(len(x))]
    scanned = ItemIndex(ids, x, model_version="m", scan="sq8")
    flat = ItemIndex(ids, x, model_version="m", scan="flat")
    assert flat.checkpoint_ids is None and scanned.checkpoint_ids == ids
    for q in users(x, 10):
        top, rows = scanned.search_rows(q, 20)
        assert rows is not None and top == [ids[r] for r in rows.tolist()]
        assert top == [i for i, _ in flat.search(q, 20)]
        assert flat.search_rows(q, 20) == (top, None)
    scanned.apply_new_items([ItemVectorRecord("n0", "m", 1, x[3] * 0.5)])
    top, rows = scanned.search_rows(users(x, 1)[0], 20)
    assert rows is None and top == [i for i, _ in scanned.search(users(x, 1)[0], 20)]
    with pytest.raises(ValueError, match="k must be"):
        scanned.search_rows(x[0], 0)
