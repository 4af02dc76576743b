"""The demo run: broker, models, worker and API as children, replay, live figures, stop.

:func:`run_demo` starts the quick model's training and the broker side by side
(:mod:`.model`, :mod:`.feed`), gives the run its own ``demo<time>`` namespace (app
id, topics, state), starts a worker and the API as child processes, replays the
events while printing live figures (and the time from the command to the first
live vector), prints example queries, keeps the stream flowing while the full model
trains and rolls out, stays up for ``--duration`` seconds or until Ctrl-C, and stops
everything it started. Progress goes through ``DemoOptions.say``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.eventfile import read_events, shared_data_dir
from interest_stream.core.settings import Settings
from interest_stream.demo.feed import CALM_RATE, Feed, ensure_kafka
from interest_stream.demo.model import DemoModels
from interest_stream.demo.options import DemoOptions
from interest_stream.procs import Service, http_get_json, wait_http

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["run_demo"]

#: Seconds between two ``[live]`` lines during the first pass, and after it.
LIVE_EVERY_S = 2.0
CALM_LIVE_EVERY_S = 30.0
#: Bound on the wait for the full model in ``--duration`` mode, beyond its budget.
FULL_MODEL_GRACE_S = 600.0
#: Grace of the worker's stop (drain, then Faust's shutdown): slow on a loaded machine.
WORKER_STOP_S = 90.0


def _metric(text: str, name: str) -> float | None:
    """Sum of a Prometheus metric's samples named exactly ``name`` (any labels)."""
    total: float | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        base = head.split("{", 1)[0]
        if base == name:
            try:
                total = (total or 0.0) + float(value)
            except ValueError:
                continue
    return total


@dataclass
class _Run:
    """The demo's two child services, their addresses, and the live-line state."""

    worker: Service
    api: Service
    api_url: str
    worker_url: str
    logs: Path
    prev_applied: float = 0.0
    prev_t: float = 0.0

    def check(self) -> None:
        """Raise :class:`~interest_stream.procs.ServiceError` if either child died."""
        self.worker.check()
        self.api.check()

    def live_line(self) -> str:
        """``[live]`` figures: events applied (and per second), users, freshness, model."""
        _, wtext = http_get_json(f"{self.worker_url}/metrics")
        _, fresh = http_get_json(f"{self.api_url}/v1/stats")
        text = wtext if isinstance(wtext, str) else ""
        applied = _metric(text, "interest_worker_events_applied_total") or 0.0
        now = time.monotonic()
        rate = (applied - self.prev_applied) / max(now - self.prev_t, 1e-6)
        self.prev_applied, self.prev_t = applied, now
        st = fresh if isinstance(fresh, dict) else {}
        f = st.get("freshness") or {}
        return (
            f"[live] applied {int(applied):>7,} events ({rate:>6,.0f} ev/s) | "
            f"users in API {st.get('users', '?')} | freshness p50 {f.get('p50_ms', '?')} ms "
            f"p99 {f.get('p99_ms', '?')} ms | model {st.get('model_version', '?')}"
        )


def _demo_settings(settings: Settings, ns: str, work: Path, model_dir: Path) -> Settings:
    """``settings`` with the run's own app id, topics and state (namespace ``ns``)."""
    return settings.model_copy(
        update={
            "model_dir": model_dir,
            "app_id": f"interest-{ns}",
            "event_topics": tuple(
                f"{ns}.events.{t}" for t in ("view", "click", "cart", "fav", "purchase")
            ),
            "dlq_topic": f"{ns}.events.dlq",
            "output_topic": f"{ns}.user-interest",
            "state_dir": work / "state" / ns,
            # the API asks the worker for explanations (explain=true)
            "worker_urls": settings.worker_urls or f"http://127.0.0.1:{settings.worker_web_port}",
        }
    )


def _first_live(run: _Run, opts: DemoOptions, summary: dict[str, Any], wait: float = 0) -> None:
    """Note and print the time from the command to the first user vector in the API.

    With ``wait``, poll for it that many seconds at most.
    """
    deadline = time.monotonic() + wait
    _, st = http_get_json(f"{run.api_url}/v1/stats")
    while not (isinstance(st, dict) and (st.get("users") or 0) > 0):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.25)
        run.check()
        _, st = http_get_json(f"{run.api_url}/v1/stats")
    summary["first_live_s"] = round(opts.elapsed(), 1)
    opts.say(
        f"[live] first user vector live in the API {summary['first_live_s']:.1f}s after "
        f"the command (model {st.get('model_version')})"
    )


def _follow(
    run: _Run, feed: Feed, total: int, opts: DemoOptions, models: DemoModels,
    summary: dict[str, Any],
) -> None:  # fmt: skip
    """Print live figures until the first pass ended and the worker caught up with it."""
    run.prev_t = time.monotonic()
    next_line = run.prev_t + LIVE_EVERY_S
    done_at: float | None = None
    while not feed.first_done.is_set() or _lagging(run.worker_url, total):
        time.sleep(0.25 if "first_live_s" not in summary else 0.5)
        run.check()
        models.poll()
        if "first_live_s" not in summary:
            _first_live(run, opts, summary)
        now = time.monotonic()
        if now >= next_line:
            opts.say(run.live_line())
            next_line = now + LIVE_EVERY_S
        if "error" in feed.stats:
            break
        if feed.first_done.is_set():
            done_at = done_at or now
            if now - done_at > 120:
                opts.say("[live] the worker is still catching up; moving on")
                break


def _show_examples(
    api_url: str, df: pd.DataFrame, summary: dict[str, Any], say: Callable[[str], None]
) -> None:
    """Print example queries for the busiest user; note it and its recommendations."""
    _, summary["freshness"] = http_get_json(f"{api_url}/v1/stats")
    user = str(df["user_id"].value_counts().index[0])
    summary["example_user"] = user
    say("\nTry these while it runs:")
    for path in (
        f"/v1/users/{user}/interest",
        f"/v1/users/{user}/recommendations?k=5&horizon=blend",
        f"/v1/items/{df['item_id'].iloc[-1]}/similar?k=5",
        "/metrics",
    ):
        say(f"  curl -s '{api_url}{path}'")
    say(
        f"  curl -s -X POST {api_url}/v1/audience -H 'content-type: application/json' "
        f'-d \'{{"item_id": "{df["item_id"].iloc[-1]}", "k": 5}}\''
    )
    say(f"  open {api_url}/#user={user} in a browser: the live dashboard")
    _, rec = http_get_json(f"{api_url}/v1/users/{user}/recommendations?k=5&horizon=blend")
    summary["example_recommendations"] = rec


def _stay_up(run: _Run, opts: DemoOptions, models: DemoModels) -> None:
    """Keep the stream flowing; ``--duration``: until the full model is live, then N s more."""
    until: float | None = None
    if opts.duration is not None:
        bound = time.monotonic() + opts.full_train_seconds + FULL_MODEL_GRACE_S
        if models.pending:
            opts.say("\n[demo] waiting for the full model before the --duration countdown")
        while models.pending and time.monotonic() < bound:
            time.sleep(0.5)
            run.check()
            models.poll()
        opts.say(f"\n[demo] up for {opts.duration:.0f}s more (--duration)")
        until = time.monotonic() + opts.duration
    else:
        opts.say("\n[demo] running; press Ctrl-C to stop everything")
    next_line = time.monotonic() + CALM_LIVE_EVERY_S
    while until is None or time.monotonic() < until:
        time.sleep(0.5 if until is None else min(0.5, max(until - time.monotonic(), 0.0)))
        run.check()
        models.poll()
        if time.monotonic() >= next_line:
            opts.say(run.live_line())
            next_line = time.monotonic() + CALM_LIVE_EVERY_S


def _serve_demo(
    run: _Run, settings: Settings, df: pd.DataFrame, opts: DemoOptions, models: DemoModels,
    summary: dict[str, Any],
) -> None:  # fmt: skip
    """Start the services, replay, follow, show examples; stay up (``--duration`` or Ctrl-C)."""
    run.worker.start()
    run.api.start()
    wait_http(f"{run.api_url}/healthz", timeout=120)
    wait_http(f"{run.worker_url}/healthz/", timeout=120)
    opts.say(
        f"[run] worker pid {run.worker.pid}, API {run.api_url} (pid {run.api.pid}) up "
        f"{opts.elapsed():.0f}s after the command; logs in {run.logs}"
    )
    opts.say(f"[replay] {len(df):,} events at {opts.rate:,.0f} ev/s")
    feed = Feed(df, settings, opts.rate).start()
    try:
        _follow(run, feed, len(df), opts, models, summary)
        if "error" in feed.stats:
            raise InterestStreamError(f"replay failed: {feed.stats['error']}")
        if "first_live_s" not in summary:
            _first_live(run, opts, summary, wait=120.0)
        summary["replay"] = feed.stats.get("replay")
        opts.say(
            f"[replay] first pass done; the same events follow again, shifted in time, at "
            f"{min(opts.rate, CALM_RATE):,.0f} ev/s, so the stream keeps flowing"
        )
        _show_examples(run.api_url, df, summary, opts.say)
        _stay_up(run, opts, models)
    finally:
        feed.stop()
        summary["events_sent"] = feed.stats["sent"]


def run_demo(settings: Settings, opts: DemoOptions) -> dict[str, Any]:
    """Run the demo end to end and stop everything it started on the way out.

    Args:
        settings: The effective settings; the demo derives its own app id, topics
            and state folder from them, and uses their broker if it answers.
        opts: What to replay, how fast, where to work, how long to stay up.

    Returns:
        The summary: ``api``, ``logs``, ``first_live_s`` (command -> first user
        vector in the API), ``replay`` (first pass), ``freshness`` (the API's
        ``/v1/stats``), ``example_user``, ``example_recommendations``,
        ``events_sent``, ``full_model`` (``live``, ``none``, ``stopped``, ...) and
        ``full_model_version`` (keys are missing when the demo is stopped early).

    Raises:
        InterestStreamError: Kafka, training, a child service or the replay failed
            (e.g. :class:`~interest_stream.procs.ServiceError`).
    """
    from interest_stream.streams.topics import ensure_topics

    if settings.log_level != "DEBUG":  # the progress lines are the output; logs: the children's
        logging.getLogger("interest_stream").setLevel(logging.WARNING)
        logging.getLogger("kafka").setLevel(logging.ERROR)  # the replay's slow-poll notices
    events_path = opts.events or (
        shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
    )
    work = opts.work_dir.resolve()
    model_dir = Path(settings.model_dir or work / "model").resolve()
    ns = f"demo{time.strftime('%Y%m%d%H%M%S')}"
    logs = work / "logs" / ns
    models = DemoModels(events_path, model_dir, work, logs, settings, opts)
    summary: dict[str, Any] = {"logs": str(logs)}
    with contextlib.ExitStack() as stack:
        try:
            stack.callback(lambda: summary.update(models.stop()))
            models.begin()  # the quick model trains while the broker starts
            settings, kafka_cfg = ensure_kafka(settings, opts)
            if kafka_cfg is not None and opts.stop_kafka is not False:
                stack.callback(_stop_kafka, kafka_cfg, opts.say)
            settings = _demo_settings(settings, ns, work, model_dir)
            df = read_events(events_path)
            df = df.head(opts.limit) if opts.limit else df
            models.ready()
            ensure_topics(settings)
            run = _Run(
                worker=Service.cli("worker", ["worker"], settings, logs),
                api=Service.cli("api", ["serve"], settings, logs),
                api_url=f"http://{settings.api_host}:{settings.api_port}",
                worker_url=f"http://127.0.0.1:{settings.worker_web_port}",
                logs=logs,
            )
            summary["api"] = run.api_url
            stack.callback(run.worker.stop, WORKER_STOP_S)
            stack.callback(run.api.stop)
            models.watch(run.api_url, run.worker_url)
            _serve_demo(run, settings, df, opts, models, summary)
        except KeyboardInterrupt:
            opts.say("\n[demo] stopping...")
    return summary


def _stop_kafka(cfg: Any, say: Callable[[str], None]) -> None:
    from interest_stream.streams.kafka_local import broker

    broker.stop(cfg)
    say("[kafka] stopped")


def _lagging(worker_url: str, total: int) -> bool:
    """True while the worker has applied (or deduplicated) fewer than ``total`` events."""
    _, text = http_get_json(f"{worker_url}/metrics")
    if not isinstance(text, str):
        return False
    applied = (_metric(text, "interest_worker_events_applied_total") or 0) + (
        _metric(text, "interest_worker_events_duplicate_total") or 0
    )
    return applied < total
