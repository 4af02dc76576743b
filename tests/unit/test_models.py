"""Unit tests of the interest encoder's inference API and checkpoint folder (no network)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_helpers import random_histories, synthetic_events, tiny_train_config

from interest_stream import models
from interest_stream.core.errors import InterestStreamError
from interest_stream.core.events import Interaction
from interest_stream.models import (
    CheckpointError,
    EncoderConfig,
    InterestModel,
    ModelError,
    TrainConfig,
    blend,
    load_item_vectors,
    select_device,
    short_window,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint trained on synthetic events (about two seconds)."""
    out = tmp_path_factory.mktemp("ckpt") / "model"
    models.train(synthetic_events(seed=1), out, tiny_train_config(), progress=False)
    return out


@pytest.fixture(scope="module")
def model(ckpt: Path) -> InterestModel:
    return InterestModel.load(ckpt, device="cpu")


def test_public_api_names() -> None:
    for name in models.__all__:
        assert getattr(models, name) is not None, name
    assert issubclass(ModelError, InterestStreamError)
    assert callable(models.train) and callable(models.evaluate)
    # the functions live in submodules named by job
    import interest_stream.models.evaluation as ev_mod
    import interest_stream.models.training as train_mod

    assert callable(train_mod.train) and callable(ev_mod.evaluate)


def test_checkpoint_folder_describes_itself(ckpt: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "items.json",
        "item_vectors.npy",
        "item_meta.json",
        "metrics.json",
        "versions.json",
    ):
        assert (ckpt / name).is_file(), name
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["metric"] == "ip" and cfg["format_version"] == models.FORMAT_VERSION
    assert cfg["seed"] == 0 and cfg["dim"] == 16
    assert cfg["train"]["short_window_events"] == 50
    versions = json.loads((ckpt / "versions.json").read_text())
    assert {"torch", "transformers", "numpy", "python"} <= set(versions)
    meta = json.loads((ckpt / "item_meta.json").read_text())
    assert all("category" in m for m in meta.values())


def test_shapes_and_dtypes(model: InterestModel) -> None:
    hs = random_histories(5, 12, model.item_ids)
    s = model.encode_short(hs)
    lo = model.encode_long(hs)
    assert s.shape == (5, model.dim) and lo.shape == (5, model.dim)
    assert s.dtype == np.float32 and lo.dtype == np.float32
    items = model.item_vectors()
    assert items.shape == (len(model.item_ids), model.dim) and items.dtype == np.float32
    assert model.encode_short([]).shape == (0, model.dim)


def test_checkpoint_round_trip(ckpt: Path, model: InterestModel) -> None:
    again = InterestModel.load(ckpt, device="cpu")
    hs = random_histories(7, 30, model.item_ids, seed=3)
    np.testing.assert_array_equal(model.encode_short(hs), again.encode_short(hs))
    np.testing.assert_array_equal(model.encode_long(hs), again.encode_long(hs))
    ids, vecs, cfg = load_item_vectors(ckpt)
    assert ids == model.item_ids
    np.testing.assert_allclose(vecs, model.item_vectors(), rtol=0, atol=1e-6)
    assert cfg["model_version"] == model.model_version


def test_batched_equals_one_by_one(model: InterestModel) -> None:
    """Padding and masks must not leak between users of one batch."""
    hs = [h[: 3 + 7 * k] for k, h in enumerate(random_histories(6, 60, model.item_ids, seed=4))]
    hs.append([])
    for fn in (model.encode_short, model.encode_long):
        batched = fn(hs)
        single = np.concatenate([fn([h]) for h in hs])
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_oov_and_empty_histories(model: InterestModel) -> None:
    unknown = [
        [
            Interaction("never-seen-1", "view", 1_512_000_000_000),
            Interaction("never-seen-2", "weird-type", 1_512_000_001_000),
        ]
    ]
    for fn in (model.encode_short, model.encode_long):
        v = fn(unknown)
        assert np.isfinite(v).all()
        empty = fn([[], []])
        assert np.isfinite(empty).all()
        np.testing.assert_array_equal(empty[0], empty[1])  # the learned "no history" vector
        assert not np.allclose(empty[0], v[0])


def test_caps_apply_to_any_length(model: InterestModel) -> None:
    (h,) = random_histories(1, 500, model.item_ids, seed=5, span_ms=9 * 86_400_000)
    short_cap = model.encoder.cfg.short_max_len
    long_cap = model.encoder.cfg.long_max_len
    np.testing.assert_allclose(
        model.encode_short([h]), model.encode_short([h[-short_cap:]]), atol=1e-6
    )
    np.testing.assert_allclose(
        model.encode_long([h]), model.encode_long([h[-long_cap:]]), atol=1e-6
    )


def test_short_window_rule() -> None:
    t = 1_512_000_000_000
    h = [Interaction(f"i{k}", "view", t + k * 60_000) for k in range(100)]
    w = short_window(h, max_events=50, max_minutes=30)
    assert len(w) == 31 and w[-1] == h[-1] and w[0].ts == h[-1].ts - 30 * 60_000
    assert len(short_window(h, max_events=10, max_minutes=30)) == 10
    assert short_window([], 50, 30) == []


def test_blend() -> None:
    s = np.ones((2, 4), np.float32)
    lo = np.zeros((2, 4), np.float32)
    np.testing.assert_allclose(blend(s, lo, 0.25), 0.25)
    assert blend(s[0], lo[0]).shape == (4,)
    with pytest.raises(ModelError):
        blend(s, lo[:, :3])
    with pytest.raises(ModelError):
        blend(s, lo, alpha=1.5)


def test_refuses_other_format_version(ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["format_version"] = 999
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format version"):
        InterestModel.load(bad)
    with pytest.raises(CheckpointError, match="format version"):
        load_item_vectors(bad)


def test_missing_files_are_clear_errors(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        load_item_vectors(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match=r"items\.json"):
        load_item_vectors(partial)


def test_load_item_vectors_does_not_import_torch(ckpt: Path) -> None:
    code = (
        "import sys, interest_stream.models as models\n"
        f"ids, vecs, cfg = models.load_item_vectors({str(ckpt)!r})\n"
        "b = models.blend(vecs[:2], vecs[2:4])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(ids), vecs.shape[1], b.shape)\n"
    )
    env_path = f"{REPO}"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": env_path, "PATH": ""},
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "16"


def test_select_device() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda")
    assert select_device(None).type in ("cpu", "cuda")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA"):
            select_device("cuda")
    with pytest.raises(ModelError):
        select_device("tpu")


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ModelError, match="d_model"):
        EncoderConfig(d_model=30, n_heads=4)
    with pytest.raises(ModelError, match="cutoff_quantile"):
        TrainConfig(cutoff_quantile=0.0)
    with pytest.raises(ModelError, match="type_weights"):
        TrainConfig(type_weights={"like": 2.0})
    cfg = TrainConfig(val_task="new", loss="sampled")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_model_versions_are_unique(ckpt: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    models.train(synthetic_events(seed=2), other, tiny_train_config(epochs=1), progress=False)
    v1 = json.loads((ckpt / "config.json").read_text())["model_version"]
    v2 = json.loads((other / "config.json").read_text())["model_version"]
    assert v1 != v2
