"""Inference API of the interest encoder and checkpoint save/load.

Example::

    model = InterestModel.load("artifacts/model")          # device="auto"
    short = model.encode_short([window_u1, window_u2])    # float32 [2, dim]
    scores = blend(short, model.encode_long([h1, h2])) @ model.item_vectors().T

Histories are :class:`~interest_stream.core.events.Interaction` sequences in time order; unknown
items map to the OOV embedding, an empty history to the learned "no history" vector.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from interest_stream.core.checkpoint import short_window_spec
from interest_stream.core.events import Interaction
from interest_stream.models.blending import blend
from interest_stream.models.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    ITEM_META_FILE,
    ITEM_VECTORS_FILE,
    ITEMS_FILE,
    METRICS_FILE,
    VERSIONS_FILE,
    WEIGHTS_FILE,
    read_config,
    read_json,
    write_json,
)
from interest_stream.models.config import N_SPECIAL_ITEMS, OOV_INDEX, EncoderConfig, type_index
from interest_stream.models.encoder import InterestEncoder, SeqBatch
from interest_stream.models.errors import CheckpointError, ModelError
from interest_stream.models.extra_items import extra_rows, with_extra
from interest_stream.models.features import arrays_from_histories, short_window
from interest_stream.models.incremental import (
    LongState,
    extend_long,
    extendable,
    prefix_of,
    revisit_from_sums,
    state_vector,
)
from interest_stream.models.occlusion import exact_long_occlusion, occludable

__all__ = ["InterestModel", "blend", "library_versions", "select_device"]

log = logging.getLogger(__name__)

_MAX_CHUNK = 2048
_TOKEN_BUDGET_CPU = 16_384
_TOKEN_BUDGET_CUDA = 262_144


def select_device(device: str | None = "auto") -> torch.device:
    """The torch device to run on.

    Args:
        device: ``"auto"`` or ``None`` (cuda if available, else cpu), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The device.

    Raises:
        ModelError: ``cuda`` was asked for but is not available, or an unknown name.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but CUDA is not available; use cpu/auto")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ModelError(f"unknown device {device!r}; use auto, cpu or cuda")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a checkpoint depends on."""
    import safetensors
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "format_version": str(FORMAT_VERSION),
    }


class InterestModel:
    """A trained encoder with its vocabulary, ready for batched inference.

    Attributes:
        encoder: The torch module (eval mode).
        item_ids: Vocabulary; ``item_ids[i]`` is row ``i`` of :meth:`item_vectors`.
        config: The checkpoint's ``config.json`` content.
        model_version: Unique id of the checkpoint (UTC time + weight hash).
        dim: Size of every vector.
        device: Where the encoder runs.
    """

    def __init__(
        self,
        encoder: InterestEncoder,
        item_ids: Sequence[str],
        config: dict[str, Any],
        device: torch.device,
    ) -> None:
        self.encoder = encoder.to(device).eval()
        self.item_ids: list[str] = list(item_ids)
        self._lookup = self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.config = config
        self.model_version: str = str(config.get("model_version", "untrained"))
        self.dim: int = encoder.out_dim
        self.device = device
        self._table: torch.Tensor | None = None
        self._scores: torch.Tensor | None = None
        self._empty: np.ndarray | None = None
        self._extra: torch.Tensor | None = None
        train_cfg = config.get("train", {})
        self.short_window_events, self.short_window_minutes = short_window_spec(config)
        self.blend_alpha = float(train_cfg.get("blend_alpha", 0.5))

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = "auto") -> InterestModel:
        """Load a checkpoint folder written by :func:`interest_stream.models.train`.

        Args:
            path: The folder.
            device: ``auto``/``None`` (cuda if available), ``cpu`` or ``cuda``.

        Returns:
            The model in eval mode on the chosen device.

        Raises:
            CheckpointError: Missing files, other format version or mismatching shapes.
        """
        folder = Path(path)
        cfg = read_config(folder)
        items = read_json(folder / ITEMS_FILE)
        if not isinstance(items, list) or len(items) != int(cfg["n_items"]):
            raise CheckpointError(f"{folder / ITEMS_FILE}: expected {cfg['n_items']} item ids")
        enc = build_encoder(cfg)
        try:
            state = load_file(str(folder / WEIGHTS_FILE))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: missing") from exc
        except Exception as exc:
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: unreadable: {exc}") from exc
        try:
            enc.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder}: weights do not fit config.json: {exc}") from exc
        model = cls(enc, [str(i) for i in items], cfg, select_device(device))
        log.info(
            "loaded model %s (%d items, dim %d) on %s",
            model.model_version,
            len(model.item_ids),
            model.dim,
            model.device,
        )
        return model

    # ------------------------------------------------------------------ items
    def _item_table(self) -> torch.Tensor:
        if self._table is None:
            with torch.inference_mode():
                self._table = with_extra(self.encoder.item_table(), self._extra)
        return self._table

    def set_extra_items(self, ids: Sequence[str], input_vectors: Any) -> None:
        """Encode unknown ``ids`` from ``input_vectors`` ``[n, dim]``, not OOV (extra_items.py)."""
        self._lookup, self._extra = extra_rows(self, ids, input_vectors)
        self._table = self._empty = None

    def item_vectors(self) -> np.ndarray:
        """float32 ``[n_items, dim]``: row ``i`` is the vector of ``item_ids[i]``."""
        if self._scores is None:
            with torch.inference_mode():
                self._scores = self.encoder.score_table()
        table = self._scores[N_SPECIAL_ITEMS:]
        out: np.ndarray = table.detach().cpu().numpy().astype(np.float32, copy=True)
        return out

    # ------------------------------------------------------------------ encode
    def _encode(self, histories: Sequence[Sequence[Interaction]], long: bool) -> np.ndarray:
        """Encode in length-sorted groups so padding stays small (order is restored)."""
        cap = self.encoder.cfg.long_max_len if long else self.encoder.cfg.short_max_len
        n = len(histories)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        cuda = self.device.type == "cuda"
        table = self._item_table()
        lengths = np.fromiter((min(len(h), cap) for h in histories), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        budget = _TOKEN_BUDGET_CUDA if cuda else _TOKEN_BUDGET_CPU
        with torch.inference_mode():
            start = 0
            while start < n:
                end = start + 1
                while (
                    end < n
                    and end - start < _MAX_CHUNK
                    and (end - start + 1) * (int(lengths[order[end]]) + 1) <= budget
                ):
                    end += 1
                idx = order[start:end]
                arrays = arrays_from_histories([histories[i] for i in idx], self._lookup, cap)
                batch = SeqBatch.from_arrays(arrays, pin=cuda).to(self.device, non_blocking=cuda)
                enc = self.encoder
                vec = enc.encode_long(batch, table) if long else enc.encode_short(batch, table)
                d, rd = vec.shape[1], enc.cfg.revisit_dim
                out[idx, :d] = vec.float().cpu().numpy()
                if rd:  # the revisit channel: the long vector's, zero in the short one
                    out[idx, d : d + rd] = (
                        enc.revisit_vector(batch).float().cpu().numpy() if long else 0.0
                    )
                if enc.cfg.trend:  # the trend coordinate: one gain for every user
                    out[idx, d + rd] = float(enc.get_buffer("trend_gain"))
                start = end
        return out

    def encode_short(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        """Short-term vectors of many users' recent windows at once.

        The caller passes each user's short window (the worker: latest <= 50
        events within 30 minutes of the newest, see :meth:`short_window`); longer
        inputs are cut to the newest ``short_max_len`` events.

        Args:
            histories: ``B`` windows, each oldest first.

        Returns:
            float32 ``[B, dim]``; an empty window gives the learned "no history" vector.
        """
        return self._encode(histories, long=False)

    def encode_long(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        """Long-term vectors of many users' long histories at once.

        Args:
            histories: ``B`` histories, each oldest first (cut to the newest
                ``long_max_len`` events).

        Returns:
            float32 ``[B, dim]``; an empty history gives the learned "no history" vector.
        """
        return self._encode(histories, long=True)

    def encode_long_states(
        self,
        histories: Sequence[Sequence[Interaction]],
        states: Sequence[LongState | None],
    ) -> tuple[np.ndarray, list[LongState | None]]:
        """Long-term vectors, extending each user's cached state by its new events only.

        A history within ``long_max_len`` is encoded incrementally
        (:mod:`interest_stream.models.incremental`): from ``states[i]`` if that state
        folded a prefix of it, else from scratch; the result equals :meth:`encode_long`
        up to float rounding. Longer histories (and multi-layer long paths) are encoded
        in full and get no state.

        Args:
            histories: ``B`` histories, each oldest first.
            states: Per history, the state returned last time (or ``None``).

        Returns:
            ``(float32 [B, dim], the new states)``.
        """
        n = len(histories)
        out = np.empty((n, self.dim), dtype=np.float32)
        new: list[LongState | None] = [None] * n
        enc = self.encoder
        inc = [i for i, h in enumerate(histories) if extendable(enc, h)]
        full = sorted(set(range(n)) - set(inc))
        if full:
            out[full] = self.encode_long([histories[i] for i in full])
        todo: list[tuple[int, int, int]] = []  # (new events, history length, row)
        for i in inc:
            h, st = histories[i], states[i]
            done = st.n if st is not None and prefix_of(st, h) else 0
            todo.append((len(h) - done, len(h), i))
        todo.sort()
        start = 0
        while start < len(todo):
            end = start + 1
            while end < len(todo):  # budgets: tokens (keys) and query x key pairs
                n_rows, (k, width, _) = end - start + 1, todo[end]
                if n_rows * width > _TOKEN_BUDGET_CPU or n_rows * k * width > 1 << 21:
                    break
                if k == todo[start][0] and width > 2 * todo[start][1] + 8:
                    break  # same new events, much longer: a new chunk (less padding)
                end += 1
            rows = [i for _, _, i in todo[start:end]]
            vecs, got = self._extend([histories[i] for i in rows], [states[i] for i in rows])
            out[rows] = vecs
            for i, st in zip(rows, got, strict=True):
                new[i] = st
            start = end
        return out, new

    def _extend(
        self, histories: list[Sequence[Interaction]], states: list[LongState | None]
    ) -> tuple[np.ndarray, list[LongState]]:
        """One padded batch of :meth:`encode_long_states`'s incremental rows."""
        enc = self.encoder
        b, width = len(histories), max(len(h) for h in histories)
        items = np.zeros((b, width), dtype=np.int64)
        types = np.zeros((b, width), dtype=np.int64)
        ts = np.zeros((b, width), dtype=np.float64)
        get, shift = self._lookup.get, N_SPECIAL_ITEMS
        for r, h in enumerate(histories):
            items[r, : len(h)] = [get(e[0], OOV_INDEX - shift) + shift for e in h]
            types[r, : len(h)] = [type_index(e[1]) for e in h]
            ts[r, : len(h)] = [e[2] / 1000.0 for e in h]
        dev = self.device
        arrays = (torch.from_numpy(items).to(dev), torch.from_numpy(types).to(dev),
                  torch.from_numpy(ts).to(dev))  # fmt: skip
        out = np.empty((b, self.dim), dtype=np.float32)
        with torch.inference_mode():
            table = self._item_table()
            sums, got = extend_long(enc, states, histories, arrays, table)
            vec = state_vector(enc, sums, table)
            d, rd = vec.shape[1], enc.cfg.revisit_dim
            out[:, :d] = vec.float().cpu().numpy()
            if rd:
                out[:, d : d + rd] = revisit_from_sums(enc, sums).cpu().numpy()
            if enc.cfg.trend:
                out[:, d + rd] = float(enc.get_buffer("trend_gain"))
        return out, got

    def encode_variants(
        self,
        short: Sequence[Interaction],
        short_drops: Sequence[Sequence[int]],
        long: Sequence[Interaction],
        long_drops: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of one user's windows with events removed (occlusion, one batch per path).

        Args:
            short: The short window, oldest first.
            short_drops: Per variant, the indices into ``short`` to remove.
            long: The long history, oldest first.
            long_drops: Per variant, the indices into ``long`` to remove.

        Returns:
            ``(float32 [len(short_drops), dim], float32 [len(long_drops), dim])``.
        """
        long_out = np.empty((len(long_drops), self.dim), dtype=np.float32)
        singles = [r for r, d in enumerate(long_drops) if len(d) == 1]
        done: list[int] = []
        if singles and occludable(self.encoder, long):
            # exact and ~20x cheaper than one forward per variant (models/occlusion.py)
            with torch.inference_mode():
                vecs = (
                    exact_long_occlusion(
                        self.encoder,
                        long,
                        [long_drops[r][0] for r in singles],
                        self.item_index,
                        self._item_table(),
                    )
                    .cpu()
                    .numpy()
                )
            long_out[singles] = vecs[1:]
            whole = [r for r, d in enumerate(long_drops) if not d]  # row 0 is the whole
            long_out[whole] = vecs[0]
            done = singles + whole
        everything = [r for r, d in enumerate(long_drops) if long and len(d) == len(long)]
        if everything:  # the empty window: the learned "no history" vector
            long_out[everything] = self._empty_long()
            done += everything
        rest = sorted(set(range(len(long_drops))) - set(done))
        if rest:
            long_out[rest] = self.encode_long(_without(long, [long_drops[r] for r in rest]))
        return self.encode_short(_without(short, short_drops)), long_out

    def _empty_long(self) -> np.ndarray:
        """The long vector of the empty history (computed once per model)."""
        if self._empty is None:
            self._empty = self.encode_long([[]])[0]
        return self._empty

    @property
    def short_window_spec(self) -> tuple[int, float]:
        """``(max events, minutes)`` of the short window this model was trained with."""
        return self.short_window_events, self.short_window_minutes

    def short_window(self, history: Sequence[Interaction]) -> list[Interaction]:
        """The short window this model was trained with (cap and minutes from training)."""
        return short_window(history, self.short_window_events, self.short_window_minutes)

    def blend(self, short: np.ndarray, long: np.ndarray, alpha: float | None = None) -> np.ndarray:
        """:func:`blend` with this checkpoint's trained ``blend_alpha`` by default."""
        return blend(short, long, self.blend_alpha if alpha is None else alpha)


def _without(
    history: Sequence[Interaction], drops: Sequence[Sequence[int]]
) -> list[list[Interaction]]:
    """One copy of ``history`` per drop set, without the events at those indices."""
    out = []
    for drop in drops:
        gone = set(drop)
        out.append([e for i, e in enumerate(history) if i not in gone])
    return out


def build_encoder(cfg: dict[str, Any]) -> InterestEncoder:
    """An (untrained) encoder with the architecture and sizes of a ``config.json``."""
    enc_cfg = EncoderConfig.from_dict(cfg["encoder"])
    return InterestEncoder(
        enc_cfg,
        n_items=int(cfg["n_items"]),
        n_categories=int(cfg.get("n_categories", 0)),
        text_dim=int(cfg.get("text_dim", 0)),
    )


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    encoder: InterestEncoder,
    item_ids: Sequence[str],
    config: dict[str, Any],
    metrics: dict[str, Any],
    item_meta: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Write a complete checkpoint folder and return its ``model_version``.

    Args:
        out_dir: Target folder (created; existing checkpoint files are replaced).
        encoder: The trained module (any device).
        item_ids: Vocabulary in row order (``len == encoder.n_items``).
        config: Extra config (training settings, split, seed); format fields are added.
        metrics: Curves and figures for ``metrics.json``.
        item_meta: Optional per-item metadata for ``item_meta.json``.

    Returns:
        The new ``model_version`` (UTC timestamp + 8 hex digits of the weights' hash).
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if len(item_ids) != encoder.n_items:
        raise ModelError(f"{len(item_ids)} item ids for an encoder of {encoder.n_items} items")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].numpy().tobytes())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    version = f"{stamp}-{digest.hexdigest()[:8]}"
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(
        state, str(tmp), metadata={"model_version": version, "format_version": str(FORMAT_VERSION)}
    )
    os.replace(tmp, folder / WEIGHTS_FILE)
    encoder.eval()
    with torch.inference_mode():
        vectors = encoder.score_table()[N_SPECIAL_ITEMS:].float().cpu().numpy()
    np.save(folder / ITEM_VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float32))
    write_json(folder / ITEMS_FILE, list(item_ids))
    full = {
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "dim": encoder.out_dim,
        "metric": "ip",
        "n_items": encoder.n_items,
        "n_categories": encoder.n_categories,
        "text_dim": encoder.text_dim,
        "encoder": encoder.cfg.to_dict(),
        **config,
    }
    write_json(folder / CONFIG_FILE, full)
    write_json(folder / METRICS_FILE, metrics)
    write_json(folder / VERSIONS_FILE, library_versions())
    if item_meta is not None:
        write_json(folder / ITEM_META_FILE, item_meta)
    return version
