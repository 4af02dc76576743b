"""The cached incremental state of one user's long-term vector (no torch: the worker
process unpickles it when the encoder runs in a child process; see
:mod:`interest_stream.models.incremental`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interest_stream.core.events import Interaction

__all__ = ["LongState"]


@dataclass(frozen=True, slots=True)
class LongState:
    """Running sums of one user's long vector after its first ``n`` history events.

    Attributes:
        n: History events folded in (the history's length then).
        last: The newest folded event (the next update must follow it).
        sums: float32 ``[S_w, S_h (d_model), S_e (dim), S_rw, S_r (revisit_dim)]`` scaled
            so the newest folded event's decay is 1 (computed in float64).
    """

    n: int
    last: Interaction
    sums: np.ndarray
