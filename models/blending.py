"""Blending the short- and long-term vectors (numpy only, no torch)."""

from __future__ import annotations

import numpy as np

from interest_stream.core.vectors import blend as core_blend
from interest_stream.models.errors import ModelError

__all__ = ["blend"]


def blend(short: np.ndarray, long: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The blended interest vector ``alpha * short + (1 - alpha) * long``.

    Both vectors live in the item space and were trained with this blend (at the
    checkpoint's ``blend_alpha``, 0.5 by default), so the blend ranks items by
    inner product like either of them. No normalisation: the vectors' norms
    carry confidence.

    Args:
        short: float32 ``[dim]`` or ``[B, dim]``.
        long: Same shape as ``short``.
        alpha: Weight of the short-term vector, in ``[0, 1]``.

    Returns:
        float32 array of the same shape.

    Raises:
        ModelError: Shapes differ or ``alpha`` is outside ``[0, 1]``.
    """
    s = np.asarray(short, dtype=np.float32)
    lo = np.asarray(long, dtype=np.float32)
    if s.shape != lo.shape:
        raise ModelError(f"blend: short {s.shape} and long {lo.shape} differ")
    if not 0.0 <= alpha <= 1.0:
        raise ModelError(f"blend: alpha must be in [0, 1], got {alpha}")
    return core_blend(s, lo, alpha)
