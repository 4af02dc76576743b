"""The item index built from a model checkpoint folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from interest_stream.core.checkpoint import load_item_vectors as _fallback_read
from interest_stream.core.errors import InterestStreamError
from interest_stream.index import ItemIndex, UnknownId, write_item_vectors


def write_checkpoint(folder: Path, n: int = 200, dim: int = 12, meta: bool = True) -> np.ndarray:
    """A minimal checkpoint folder as `interest-stream train` writes it (no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    (folder / "items.json").write_text(json.dumps([f"i{j}" for j in range(n)]))
    np.save(folder / "item_vectors.npy", vecs)
    (folder / "config.json").write_text(json.dumps(
        {"format_version": 1, "model_version": "m-test", "dim": dim, "metric": "ip", "n_items": n,
         "train": {"blend_alpha": 0.3}}
    ))  # fmt: skip
    if meta:
        (folder / "item_meta.json").write_text(
            json.dumps({"i0": {"category": "c1"}, "i1": "c2", "i2": {"cold": True}})
        )
    return vecs


def test_from_checkpoint(tmp_path: Path) -> None:
    vecs = write_checkpoint(tmp_path / "ckpt")
    items = ItemIndex.from_checkpoint(tmp_path / "ckpt")
    assert items.count() == len(items) == 200 and items.dim == 12
    assert items.model_version == "m-test" and items.metric == "ip"
    assert items.blend_alpha == pytest.approx(0.3)
    assert "i5" in items and "x" not in items
    np.testing.assert_array_equal(items.vector("i5"), vecs[5])
    assert items.category("i0") == "c1" and items.category("i1") == "c2"
    assert items.category("i2") is None and items.category("i3") is None
    st = items.stats()
    assert st["items"] == 200 and st["index"]["kind"] == "flat"


def test_similar_and_search(tmp_path: Path) -> None:
    vecs = write_checkpoint(tmp_path / "ckpt")
    items = ItemIndex.from_checkpoint(tmp_path / "ckpt", backend="numpy")
    sim = items.similar("i5", 10)
    assert len(sim) == 10 and all(i != "i5" for i, _ in sim)
    scores = [s for _, s in sim]
    assert scores == sorted(scores, reverse=True)
    want = np.argsort(-(vecs @ vecs[5]))[1:11]
    assert [i for i, _ in sim] == [f"i{j}" for j in want]
    top = items.search(vecs[5], 3, exclude={"i5", f"i{want[0]}"})
    assert [i for i, _ in top] == [f"i{j}" for j in want[1:4]]
    assert len(items.search(vecs[0], 1000)) == 200
    with pytest.raises(UnknownId, match="unknown item 'nope'"):
        items.similar("nope", 3)


def test_broken_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(InterestStreamError):
        ItemIndex.from_checkpoint(tmp_path / "missing")
    write_checkpoint(tmp_path / "ckpt", meta=False)
    np.save(tmp_path / "ckpt" / "item_vectors.npy", np.zeros((3, 12), np.float32))
    with pytest.raises(InterestStreamError, match="shape"):
        ItemIndex.from_checkpoint(tmp_path / "ckpt")
    with pytest.raises(InterestStreamError, match="shape"):
        _fallback_read(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="empty"):
        ItemIndex([], np.zeros((0, 4)))


def test_fallback_reader_matches(tmp_path: Path) -> None:
    vecs = write_checkpoint(tmp_path / "ckpt")
    ids, got, cfg = _fallback_read(tmp_path / "ckpt")
    assert ids[:2] == ["i0", "i1"] and cfg["dim"] == 12
    np.testing.assert_array_equal(got, vecs)


def test_write_item_vectors(tmp_path: Path) -> None:
    vecs = np.eye(4, dtype=np.float32)
    folder = write_item_vectors(tmp_path / "c", ["a", "b", "c", "d"], vecs, model_version="v9",
                                blend_alpha=0.7, meta={"a": "cat"})  # fmt: skip
    items = ItemIndex.from_checkpoint(folder)
    assert items.model_version == "v9" and items.blend_alpha == pytest.approx(0.7)
    assert items.category("a") == "cat" and items.similar("a", 1)[0][1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="ids"):
        write_item_vectors(tmp_path / "d", ["a"], vecs)
