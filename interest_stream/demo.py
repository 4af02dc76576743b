"""``interest-stream demo``: the whole product, end to end, on the bundled Taobao sample.

:func:`run_demo` uses the broker at ``INTEREST_KAFKA_BOOTSTRAP`` (or starts a local
one), trains a model or reuses the checkpoint in the model folder, runs a worker
and the API as child processes under a fresh ``demo<time>`` namespace (own app
id, topics and state), replays the events while printing live throughput and
freshness, prints example queries, stays up for ``--duration`` seconds or until
Ctrl-C, and stops everything it started. Progress goes through
``DemoOptions.say``; the summary is returned. Design notes: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.eventfile import read_events, shared_data_dir
from interest_stream.core.settings import Settings
from interest_stream.procs import Service, http_get_json, wait_http

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)

#: Training budget of the demo (``interest-stream train`` has none).
DEMO_TRAIN_SECONDS = 300.0


@dataclass
class DemoOptions:
    """What the demo does; the CLI fills it.

    Attributes:
        events: Event file to train on and replay (default: the shared Taobao slice).
        work_dir: Model (unless ``INTEREST_MODEL_DIR`` is set), state and logs.
        rate: Replay pace, events per second.
        duration: Stay up this many seconds after the replay; ``None``: until Ctrl-C.
        limit: Replay only the first N events.
        epochs: Training epochs (default: the training configuration's).
        retrain: Train even if the model folder holds a checkpoint.
        stop_kafka: ``False`` leaves a broker the demo started running.
        say: Receives each progress line.
    """

    events: Path | None = None
    work_dir: Path = Path(".interest-stream/demo")
    rate: float = 1500.0
    duration: float | None = None
    limit: int | None = None
    epochs: int | None = None
    retrain: bool = False
    stop_kafka: bool | None = None
    say: Callable[[str], None] = field(default=print)


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


def _ensure_kafka(settings: Settings, opts: DemoOptions) -> tuple[Settings, Any]:
    from interest_stream.streams.kafka_local import broker
    from interest_stream.streams.topics import KafkaUnavailable, admin_client

    try:
        admin_client(settings, timeout_s=3.0).close()
        opts.say(f"[kafka] using the broker at {settings.kafka_bootstrap}")
        return settings, None
    except KafkaUnavailable:
        pass
    _host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    cfg = broker.BrokerConfig(port=int(port) if port.isdigit() else 9092)
    opts.say("[kafka] starting a local Apache Kafka (first run downloads its jars)...")
    st = broker.start(cfg, timeout=180.0, progress=True)
    opts.say(f"[kafka] up at {st.bootstrap} (logs: {st.log_file})")
    return settings.model_copy(update={"kafka_bootstrap": st.bootstrap}), cfg


def _ensure_model(events_path: Path, model_dir: Path, opts: DemoOptions) -> None:
    from interest_stream.models import TrainConfig, train

    if (model_dir / "config.json").exists() and not opts.retrain:
        opts.say(f"[model] reusing the checkpoint in {model_dir}")
        return
    opts.say(
        f"[model] training on {events_path.name} -> {model_dir} "
        f"(at most {DEMO_TRAIN_SECONDS / 60:.0f} minutes)"
    )
    df = read_events(events_path)
    # bounded time, whole file (cutoff 1.0): every replayed item is known to the index
    kwargs: dict[str, Any] = {"max_train_seconds": DEMO_TRAIN_SECONDS, "cutoff_quantile": 1.0}
    if opts.epochs is not None:
        kwargs["epochs"] = opts.epochs
    t0 = time.monotonic()
    result = train(df, model_dir, TrainConfig(**kwargs), progress=True)
    opts.say(
        f"[model] trained in {time.monotonic() - t0:.0f}s: {result.model_version}, "
        f"best epoch {result.best_epoch}, validation NDCG@10 {result.val_ndcg10}"
    )


@dataclass
class _Run:
    """The demo's two child services and their addresses."""

    worker: Service
    api: Service
    api_url: str
    worker_url: str
    logs: Path

    def check(self) -> None:
        """Raise :class:`~interest_stream.procs.ServiceError` if either child died."""
        self.worker.check()
        self.api.check()


def _demo_settings(settings: Settings, work: Path, model_dir: Path) -> tuple[str, Settings]:
    """The run's name (``demo<time>``), and ``settings`` with its own app id, topics, state."""
    ns = f"demo{time.strftime('%Y%m%d%H%M%S')}"
    return ns, settings.model_copy(
        update={
            "model_dir": model_dir,
            "app_id": f"interest-{ns}",
            "event_topics": tuple(
                f"{ns}.events.{t}" for t in ("view", "click", "cart", "fav", "purchase")
            ),
            "dlq_topic": f"{ns}.events.dlq",
            "output_topic": f"{ns}.user-interest",
            "state_dir": work / "state" / ns,
        }
    )


def _start_replay(
    df: pd.DataFrame, settings: Settings, rate: float
) -> tuple[threading.Event, dict[str, Any]]:
    """Replay ``df`` in a thread; the event is set when it ends, the dict holds its outcome."""
    from interest_stream.streams.replay import replay_events

    done = threading.Event()
    stats: dict[str, Any] = {}

    def replay() -> None:
        try:
            stats["replay"] = replay_events(df, settings, rate=rate).to_dict()
        except InterestStreamError as exc:
            stats["error"] = str(exc)
        finally:
            done.set()

    threading.Thread(target=replay, name="replay", daemon=True).start()
    return done, stats


def _follow(run: _Run, done: threading.Event, total: int, say: Callable[[str], None]) -> None:
    """Print live throughput and freshness until the replay ends and the worker caught up."""
    prev_applied, prev_t = 0.0, time.monotonic()
    done_at: float | None = None
    while not done.is_set() or _lagging(run.worker_url, total):
        if done.is_set():
            time.sleep(2.0)  # the replay is over: poll at the same pace while catching up
        else:
            done.wait(2.0)
        run.check()
        _, wtext = http_get_json(f"{run.worker_url}/metrics")
        _, fresh = http_get_json(f"{run.api_url}/v1/stats")
        applied = _metric(
            wtext if isinstance(wtext, str) else "", "interest_worker_events_applied_total"
        )
        now = time.monotonic()
        rate = ((applied or 0.0) - prev_applied) / max(now - prev_t, 1e-6)
        prev_applied, prev_t = applied or 0.0, now
        st = fresh if isinstance(fresh, dict) else {}
        f = st.get("freshness") or {}
        say(
            f"[live] applied {int(applied or 0):>7,} events ({rate:>6,.0f} ev/s) | "
            f"users in API {st.get('users', '?')} | freshness p50 {f.get('p50_ms', '?')} ms "
            f"p99 {f.get('p99_ms', '?')} ms"
        )
        if done.is_set():
            done_at = done_at or now
            if now - done_at > 120:
                say("[live] the worker is still catching up; moving on")
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


def _serve_demo(
    run: _Run, settings: Settings, events_path: Path, opts: DemoOptions, summary: dict[str, Any]
) -> None:
    """Start the services, replay, follow, show examples; stay up (``--duration`` or Ctrl-C)."""
    run.worker.start()
    run.api.start()
    wait_http(f"{run.api_url}/healthz", timeout=120)
    wait_http(f"{run.worker_url}/healthz/", timeout=120)
    opts.say(
        f"[run] worker pid {run.worker.pid}, API {run.api_url} (pid {run.api.pid}); "
        f"logs in {run.logs}"
    )
    df = read_events(events_path)
    if opts.limit:
        df = df.head(opts.limit)
    opts.say(f"[replay] {len(df):,} events at {opts.rate:,.0f} ev/s")
    done, stats = _start_replay(df, settings, opts.rate)
    _follow(run, done, len(df), opts.say)
    if "error" in stats:
        raise InterestStreamError(f"replay failed: {stats['error']}")
    summary["replay"] = stats.get("replay")
    _show_examples(run.api_url, df, summary, opts.say)
    if opts.duration is not None:
        opts.say(f"\n[demo] up for {opts.duration:.0f}s more (--duration)")
        time.sleep(opts.duration)
    else:
        opts.say("\n[demo] running; press Ctrl-C to stop everything")
        while True:
            time.sleep(1.0)
            run.check()


def run_demo(settings: Settings, opts: DemoOptions) -> dict[str, Any]:
    """Run the demo end to end and stop everything it started on the way out.

    Args:
        settings: The effective settings; the demo derives its own app id, topics
            and state folder from them, and uses their broker if it answers.
        opts: What to replay, how fast, where to work, how long to stay up.

    Returns:
        The summary: ``api``, ``logs``, ``replay`` (replay statistics),
        ``freshness`` (the API's ``/v1/stats``), ``example_user`` and
        ``example_recommendations`` (keys after ``logs`` are missing when the
        demo is stopped early with Ctrl-C).

    Raises:
        InterestStreamError: Kafka, training, a child service or the replay failed
            (e.g. :class:`~interest_stream.procs.ServiceError`).
    """
    from interest_stream.streams.topics import ensure_topics

    events_path = opts.events or (
        shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
    )
    work = opts.work_dir.resolve()
    model_dir = settings.model_dir or work / "model"
    settings, kafka_cfg = _ensure_kafka(settings, opts)
    ns, settings = _demo_settings(settings, work, model_dir)
    _ensure_model(events_path, model_dir, opts)
    ensure_topics(settings)
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    worker_url = f"http://127.0.0.1:{settings.worker_web_port}"
    logs = work / "logs" / ns
    run = _Run(
        worker=Service.cli("worker", ["worker"], settings, logs),
        api=Service.cli("api", ["serve"], settings, logs),
        api_url=api_url,
        worker_url=worker_url,
        logs=logs,
    )
    summary: dict[str, Any] = {"api": api_url, "logs": str(logs)}
    try:
        _serve_demo(run, settings, events_path, opts, summary)
    except KeyboardInterrupt:
        opts.say("\n[demo] stopping...")
    finally:
        run.api.stop()
        run.worker.stop()
        if kafka_cfg is not None and opts.stop_kafka is not False:
            from interest_stream.streams.kafka_local import broker

            broker.stop(kafka_cfg)
            opts.say("[kafka] stopped")
    return summary


def _lagging(worker_url: str, total: int) -> bool:
    """True while the worker has applied (or deduplicated) fewer than ``total`` events."""
    _, text = http_get_json(f"{worker_url}/metrics")
    if not isinstance(text, str):
        return False
    applied = (_metric(text, "interest_worker_events_applied_total") or 0) + (
        _metric(text, "interest_worker_events_duplicate_total") or 0
    )
    return applied < total
