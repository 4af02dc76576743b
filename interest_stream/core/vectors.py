"""Vector arithmetic shared by the encoder and the indexes (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["blend"]


def blend(short: np.ndarray, long: np.ndarray, weight: float) -> np.ndarray:
    """The blended interest vector ``weight * short + (1 - weight) * long``.

    No normalisation: the encoder trains the blend this way and the vectors'
    norms carry confidence.

    Args:
        short: float32 ``[dim]`` or ``[B, dim]``.
        long: Same shape as ``short``.
        weight: Weight of the short-term vector.

    Returns:
        C-contiguous float32 array of the same shape.
    """
    return np.ascontiguousarray(weight * short + (1.0 - weight) * long, dtype=np.float32)
