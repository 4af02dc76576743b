"""CPU pressure and replayable randomness for the crash scenarios (test_pressure.py).

* :func:`test_seed` -- the seed of a randomized test: ``INTEREST_TEST_SEED`` when
  given, else a fresh one; always printed, so a failure can be replayed exactly.
* :class:`CpuPressure` -- busy-loop processes on every core, and the worker and
  broker pinned to one core (``sched_setaffinity``, what ``taskset`` does), so
  the processes under test get a fraction of one core as on a busy machine.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

SEED_ENV = "INTEREST_TEST_SEED"
REPEAT_ENV = "INTEREST_PRESSURE_REPEAT"
#: Busy loops per core (default 1); 0 when several sessions share one set of hogs.
HOGS_ENV = "INTEREST_PRESSURE_HOGS"

__all__ = ["REPEAT_ENV", "SEED_ENV", "CpuPressure", "pin_process", "repeat_count", "test_seed"]


def test_seed(offset: int = 0) -> int:
    """The seed of run ``offset``: ``INTEREST_TEST_SEED + offset``, else time-based; printed."""
    given = os.environ.get(SEED_ENV)
    base = int(given) if given else int(time.time() * 1000) % 1_000_000_007
    seed = base + offset
    print(f"\n[seed] {SEED_ENV}={seed}", flush=True)
    return seed


test_seed.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name


def repeat_count() -> int:
    """How many times each pressure scenario runs (``INTEREST_PRESSURE_REPEAT``, default 1)."""
    return max(1, int(os.environ.get(REPEAT_ENV, "1")))


def all_cores() -> set[int]:
    """The cores this process may run on."""
    return set(os.sched_getaffinity(0))


def pin_process(pid: int, cores: set[int]) -> None:
    """Pin every thread of ``pid`` (and so the children it starts later) to ``cores``."""
    tasks = Path(f"/proc/{pid}/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):
            continue


class CpuPressure:
    """Busy loops on every core; processes given to :meth:`squeeze` share one core with them.

    Args:
        hogs_per_core: Busy-loop processes started on each core.
        core: The core the squeezed processes are pinned to.
    """

    def __init__(self, hogs_per_core: int | None = None, core: int | None = None) -> None:
        cores = sorted(all_cores())
        self.cores = cores
        self.core = cores[0] if core is None else core
        if hogs_per_core is None:
            hogs_per_core = int(os.environ.get(HOGS_ENV, "1"))
        self.hogs_per_core = hogs_per_core
        self._hogs: list[subprocess.Popen[bytes]] = []
        self._squeezed: list[int] = []

    def __enter__(self) -> CpuPressure:
        for core in self.cores:
            for _ in range(self.hogs_per_core):
                proc = subprocess.Popen(
                    [sys.executable, "-c", "while True: pass"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                pin_process(proc.pid, {core})
                self._hogs.append(proc)
        return self

    def squeeze(self, pid: int) -> None:
        """Pin ``pid`` to the squeezed core (undone on exit for processes still alive)."""
        pin_process(pid, {self.core})
        self._squeezed.append(pid)

    def describe(self) -> str:
        """One line for the test output."""
        return (
            f"{self.hogs_per_core} busy loop(s) on each of cores {self.cores}; "
            f"worker(s) and broker pinned to core {self.core}"
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in self._hogs:
            proc.kill()
        for proc in self._hogs:
            proc.wait()
        everywhere = set(self.cores)
        for pid in self._squeezed:
            pin_process(pid, everywhere)


def rng(seed: int) -> random.Random:
    """A random generator for one run."""
    return random.Random(seed)
