"""The demo's quick model: the product's own trainer, cut down to seconds of training.

Run as a child process by the demo (``python -m interest_stream.demo.quick --events F
--out DIR --seconds S``). It writes a real checkpoint of the product's format and
architecture (:func:`interest_stream.models.train`, whole file, cutoff quantile 1.0,
so every replayed item is in the vocabulary), trained for ``S`` seconds (at least one
epoch) on a lighter objective: a twentieth of the next-item examples, the long-term
objective only at the start of 24-hour sessions with 10 targets each, 512 sampled
negatives, no validation and no refit. Measured on the 2-core machine under a load
average of 9: one such epoch takes 12 s, one epoch of the full configuration 245 s.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "quick_config"]


def quick_config(seconds: float) -> Any:
    """The :class:`~interest_stream.models.TrainConfig` of the quick model."""
    from interest_stream.models import TrainConfig

    return TrainConfig(
        epochs=100, val_fraction=0.0, refit=False, cutoff_quantile=1.0,
        next_item_rate=0.05, long_within_session_rate=0.0, max_long_targets=10,
        n_negatives=512, batch_size=512, session_gap_minutes=1440.0, threads=1,
        max_train_seconds=seconds,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Train the quick model: ``--events``, ``--out``, ``--seconds``; prints the result (JSON)."""
    ap = argparse.ArgumentParser(description="Train the demo's quick model.")
    ap.add_argument("--events", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=12.0)
    args = ap.parse_args(argv)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    from interest_stream.core.eventfile import read_events
    from interest_stream.models import train

    result = train(read_events(args.events), args.out, quick_config(args.seconds), progress=False)
    print(json.dumps({"model_version": result.model_version, "seconds": round(result.seconds, 1)}))


if __name__ == "__main__":  # pragma: no cover
    main()
