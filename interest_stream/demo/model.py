"""The demo's models: a quick one to go live with, the full one trained behind it, the rollout.

With no checkpoint in the model folder, :class:`DemoModels` trains a *quick* model
(:mod:`.quick` in a child process, seconds of training: a real checkpoint of the
product's format) while the broker starts, and serves it. Then
the *full* model trains in a niced child process in the background; when it is
done, :func:`publish_checkpoint` copies it into the model folder (``config.json``
last), and the worker (``Reencoder.maybe_reload``) and the API (``api.model_watch``)
load it without a restart. A marker file (``demo.json``) tells a later run that the
folder holds only a quick model, so that run trains the full one again.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from interest_stream.core.checkpoint import (
    CONFIG_FILE,
    checkpoint_version,
    read_json,
    read_metrics,
    write_json,
)
from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings
from interest_stream.demo.options import QUICK_TRAIN_SECONDS, DemoOptions
from interest_stream.procs import Service, http_get_json

__all__ = ["MARKER_FILE", "DemoModels", "checkpoint_kind", "publish_checkpoint"]

MARKER_FILE = "demo.json"
"""Written beside a checkpoint the demo published: ``{"kind": "quick"|"full", "model_version"}``."""
#: Niceness of the full model's training: the live path keeps the CPU it needs.
TRAIN_NICENESS = 10
#: Seconds to wait for the worker and the API to pick a published model up.
ROLLOUT_TIMEOUT_S = 120.0


def checkpoint_kind(model_dir: Path) -> str | None:
    """``None`` (no checkpoint), ``"quick"`` (the demo's quick model) or ``"full"``."""
    version = checkpoint_version(model_dir)
    if version is None:
        return None
    marker = model_dir / MARKER_FILE
    try:
        info = read_json(marker) if marker.exists() else {}
    except InterestStreamError:
        info = {}
    quick = isinstance(info, dict) and info.get("kind") == "quick"
    return "quick" if quick and info.get("model_version") == version else "full"


def publish_checkpoint(src: Path, dst: Path, kind: str) -> str:
    """Copy a finished checkpoint folder into the served one; returns its model version.

    Every file is written beside its target and renamed over it, ``config.json``
    last: readers load a checkpoint when its ``config.json`` names a new version,
    and by then every other file is the new one. Files the new checkpoint lacks
    are removed first.

    Raises:
        InterestStreamError: ``src`` holds no checkpoint.
    """
    version = checkpoint_version(src)
    if version is None:
        raise InterestStreamError(f"{src} holds no checkpoint (no readable {CONFIG_FILE})")
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p.name for p in src.iterdir() if p.is_file() and p.name != CONFIG_FILE)
    for old in dst.iterdir():
        if old.is_file() and old.name not in (*files, CONFIG_FILE, MARKER_FILE):
            old.unlink()
    for name in (*files, CONFIG_FILE):
        tmp = dst / f".{name}.publishing"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dst / name)
    write_json(dst / MARKER_FILE, {"kind": kind, "model_version": version})
    return version


def _quick_service(events: Path, out: Path, settings: Settings, logs: Path) -> Service:
    """The quick model's training (:mod:`interest_stream.demo.quick`) into ``out``."""
    args = [sys.executable, "-m", "interest_stream.demo.quick", "--events", str(events),
            "--out", str(out), "--seconds", str(QUICK_TRAIN_SECONDS)]  # fmt: skip
    return Service("train-quick", args, settings, logs)


def _full_service(
    events: Path, out: Path, settings: Settings, logs: Path, extra: list[str]
) -> Service:
    """``interest-stream train`` on the whole file into ``out``, niced."""
    verb = ["train", "--events", str(events), "--out", str(out), "--cutoff-quantile", "1.0"]
    args = [sys.executable, "-m", "interest_stream.cli", *verb, *extra, "--json"]
    nice = shutil.which("nice")
    if nice:
        args = [nice, "-n", str(TRAIN_NICENESS), *args]
    return Service("train-full", args, settings, logs)


def _duration(seconds: float) -> str:
    """``45 s`` or ``5 min``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _summary(folder: Path) -> str:
    """``N epochs, validation NDCG@10 x`` from a checkpoint's metrics, when known."""
    m = read_metrics(folder)
    parts = []
    epochs = m.get("best_epoch")
    if epochs:
        parts.append(f"{epochs} epoch{'' if epochs == 1 else 's'}")
    val = m.get("best_val_blend_ndcg@10")
    if isinstance(val, int | float):
        parts.append(f"validation NDCG@10 {val:.3f}")
    return ", ".join(parts)


class DemoModels:
    """The demo's model folder: reuse, quick model, full model in the background, rollout.

    Call :meth:`begin` first (starts the quick model's training when needed),
    :meth:`ready` once the rest of the start-up is done (waits for the quick
    model, starts the full training), then :meth:`poll` regularly: it publishes
    the full model when it is trained and reports when the worker and the API
    serve it. :meth:`stop` ends any training still running.
    """

    def __init__(
        self, events: Path, model_dir: Path, work: Path, logs: Path, settings: Settings,
        opts: DemoOptions,
    ) -> None:  # fmt: skip
        self.events, self.model_dir, self.logs = events, model_dir, logs
        self.settings, self.opts = settings, opts
        self.staging = work / "staging"
        self.quick: Service | None = None
        self.full: Service | None = None
        self.state = "none"  # none | training | rolling | live | failed | stopped
        self.version: str | None = None
        self.urls: tuple[str, str] | None = None
        self._since = 0.0

    def begin(self) -> None:
        """Reuse the folder's checkpoint, or start training the quick model (a child)."""
        kind = None if self.opts.retrain else checkpoint_kind(self.model_dir)
        if kind == "full":
            self.opts.say(f"[model] reusing the checkpoint in {self.model_dir}")
            return
        if kind == "quick":
            self.opts.say(f"[model] reusing the quick model in {self.model_dir}")
            return
        out = self.staging / "quick"
        shutil.rmtree(out, ignore_errors=True)
        self.quick = _quick_service(self.events, out, self.settings, self.logs).start()
        self.opts.say(
            f"[model] training a quick model on {self.events.name} "
            f"(~{QUICK_TRAIN_SECONDS:.0f}s of training) to go live with"
        )

    def ready(self) -> None:
        """Wait for the quick model and serve it; start the full model's training (niced).

        Raises:
            InterestStreamError: The quick model's training failed (with its log tail).
        """
        if self.quick is not None:
            while self.quick.alive():
                time.sleep(0.1)
            code = self.quick.stop()
            if code != 0:
                raise InterestStreamError(
                    f"training the quick model failed (exit code {code}); log tail:\n"
                    + self.quick.log_tail()
                )
            version = publish_checkpoint(self.staging / "quick", self.model_dir, "quick")
            self.opts.say(
                f"[model] quick model {version} ready {self.opts.elapsed():.0f}s after the "
                f"command ({_summary(self.model_dir)})"
            )
        if checkpoint_kind(self.model_dir) == "quick":
            self._start_full()

    def _start_full(self) -> None:
        out = self.staging / "full"
        shutil.rmtree(out, ignore_errors=True)
        extra = ["--max-minutes", f"{self.opts.full_train_seconds / 60:.4f}"]
        if self.opts.epochs is not None:
            extra += ["--epochs", str(self.opts.epochs)]
        self.full = _full_service(self.events, out, self.settings, self.logs, extra).start()
        self.state, self._since = "training", time.monotonic()
        self.opts.say(
            f"[model] training the full model in the background (niced, a budget of "
            f"{_duration(self.opts.full_train_seconds)}; log: {self.full.log_path}); "
            "it replaces the quick one live when it is done"
        )

    def watch(self, api_url: str, worker_url: str) -> None:
        """Where to check that the worker and the API picked a published model up."""
        self.urls = (api_url, worker_url)

    @property
    def pending(self) -> bool:
        """True while a full model is training or being rolled out."""
        return self.state in ("training", "rolling")

    def poll(self) -> None:
        """Publish the full model once trained; report when the worker and the API serve it."""
        if self.state == "training" and self.full is not None and not self.full.alive():
            self._publish_full()
        elif self.state == "rolling":
            self._check_rollout()

    def _publish_full(self) -> None:
        assert self.full is not None
        code = self.full.stop()
        took = time.monotonic() - self._since
        if code != 0:
            self.state = "failed"
            self.opts.say(f"[model] the full model's training failed (exit code {code}, log "
                          f"{self.full.log_path}); the quick model stays")  # fmt: skip
            return
        out = self.staging / "full"
        self.version = publish_checkpoint(out, self.model_dir, "full")
        self.state, self._since = "rolling", time.monotonic()
        self.opts.say(
            f"[model] full model trained in {took:.0f}s ({_summary(out)}), rolled out as "
            f"version {self.version} into {self.model_dir}"
        )

    def _check_rollout(self) -> None:
        waited = time.monotonic() - self._since
        if self.urls is not None:
            api_url, worker_url = self.urls
            _, stats = http_get_json(f"{api_url}/v1/stats")
            _, metrics = http_get_json(f"{worker_url}/metrics")
            api_ok = isinstance(stats, dict) and stats.get("model_version") == self.version
            label = f'interest_model_loaded{{model_version="{self.version}"}} 1.0'
            worker_ok = isinstance(metrics, str) and label in metrics
            if api_ok and worker_ok:
                self.state = "live"
                self.opts.say(
                    f"[model] version {self.version} live in the worker and the API "
                    f"{waited:.0f}s after the rollout (hot reload, no restart); every user "
                    "is re-encoded with it progressively"
                )
                return
        if waited > ROLLOUT_TIMEOUT_S:
            self.state = "failed"
            self.opts.say(f"[model] version {self.version} was not picked up within "
                          f"{ROLLOUT_TIMEOUT_S:.0f}s; see the logs in {self.logs}")  # fmt: skip

    def stop(self) -> dict[str, Any]:
        """End any training still running; what happened, for the summary."""
        for svc in (self.quick, self.full):
            if svc is not None and svc.alive():
                svc.stop(timeout=10.0)
                if svc is self.full:
                    self.state = "stopped"
                    self.opts.say("[model] stopped the full model's training before it "
                                  "finished; the next run trains it again")  # fmt: skip
        return {"full_model": self.state, "full_model_version": self.version}
