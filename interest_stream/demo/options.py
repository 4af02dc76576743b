"""What one demo run does (:class:`DemoOptions`, filled by the CLI) and its time budgets."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEMO_TRAIN_SECONDS", "QUICK_TRAIN_SECONDS", "DemoOptions"]

#: Wall-clock budget of the full model's background training (``interest-stream train``
#: has none of its own).
DEMO_TRAIN_SECONDS = 300.0
#: Wall-clock budget of the quick model the demo goes live with.
QUICK_TRAIN_SECONDS = 12.0


@dataclass
class DemoOptions:
    """What the demo does; the CLI fills it.

    Attributes:
        events: Event file to train on and replay (default: the shared Taobao slice).
        work_dir: Model (unless ``INTEREST_MODEL_DIR`` is set), state and logs.
        rate: Replay pace of the first pass, events per second.
        duration: Stay up this many seconds after the first pass (and after the full
            model is live, when one is training); ``None``: until Ctrl-C.
        limit: Replay only the first N events.
        epochs: Most epochs of the full model's training (default: the training's).
        retrain: Train even if the model folder holds a checkpoint.
        stop_kafka: ``False`` leaves a broker the demo started running.
        full_train_seconds: Budget of the full model's background training.
        say: Receives each progress line.
        started: ``time.monotonic()`` when the command started (time to live).
    """

    events: Path | None = None
    work_dir: Path = Path(".interest-stream/demo")
    rate: float = 1500.0
    duration: float | None = None
    limit: int | None = None
    epochs: int | None = None
    retrain: bool = False
    stop_kafka: bool | None = None
    full_train_seconds: float = DEMO_TRAIN_SECONDS
    say: Callable[[str], None] = field(default=print)
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds since the command started."""
        return time.monotonic() - self.started
