"""The worker process as a product: state (``streams.worker``) + re-encode loop + output topic.

:func:`run` is what ``interest-stream worker`` calls. With a checkpoint
(``INTEREST_MODEL_DIR``) every re-encoded user is published to the compacted
output topic (``INTEREST_OUTPUT_TOPIC``, record format in docs/CONTRACTS.md), a
forgotten user gets a tombstone there, and a newer checkpoint in the folder is
loaded without a restart (polled every :data:`MODEL_POLL_S` seconds). Without a
checkpoint the worker keeps state only. Design notes: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from faust.types import EventT

from interest_stream.core.checkpoint import CheckpointError
from interest_stream.core.records import tombstone
from interest_stream.core.settings import Settings
from interest_stream.streams.explain import Explainer
from interest_stream.streams.new_items import NewItemPublisher
from interest_stream.streams.positions import is_reserved_key
from interest_stream.streams.reencode import Encoder, Reencoder
from interest_stream.streams.topics import item_vectors_topic
from interest_stream.streams.window import BehaviorWindow, StateCodecError
from interest_stream.streams.worker import WindowWorker, run_worker

__all__ = ["MODEL_POLL_S", "ReencodingWorker", "attach_reencoder", "run"]

log = logging.getLogger(__name__)

#: Seconds between two looks at the model folder (hot reload).
MODEL_POLL_S = 5.0
#: Forgotten users whose in-flight records are filtered (see ``_ForgottenFilter``).
FORGET_FILTER_USERS = 100_000
#: Users per second re-encoded by the sweep after a start or a model swap.
STARTUP_SWEEP_PER_S = 2000.0


def _load_model(path: Path, settings: Settings, nice: int = 0) -> Encoder:
    """The worker's encoder: in a child process (default on CPU; ``nice`` added to it) or
    in this process."""
    if settings.use_encode_process():
        from interest_stream.models.encoder_process import ProcessEncoder

        threads = settings.encode_threads or 1
        return ProcessEncoder(path, settings.device, threads=threads, nice=nice)
    if settings.encode_threads > 0:
        import torch

        torch.set_num_threads(settings.encode_threads)
    from interest_stream.models import InterestModel

    model: Encoder = InterestModel.load(path, device=settings.device)
    return model


class ReencodingWorker(WindowWorker):
    """The state worker plus what the re-encode loop needs from each batch.

    It notes, per user, the Kafka timestamp of the newest message of the batch
    being processed (``produced_at`` in the output record, for freshness), and
    can iterate the windows of the partitions it holds (for re-encoding
    everyone after a model swap).
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.produced_at: dict[str, int] = {}
        #: Answers ``POST /explain/`` (set by :func:`attach_reencoder`).
        self.explainer: Explainer | None = None

    async def process_batch(self, events: Sequence[EventT[Any]]) -> Any:
        """Note each user's newest Kafka timestamp, then process as usual."""
        produced: dict[str, int] = {}
        for ev in events:
            key = ev.message.key
            if not key:
                continue
            user = key.decode("utf-8", errors="replace") if isinstance(key, bytes) else str(key)
            ts = int(ev.message.timestamp * 1000)
            if ts > produced.get(user, 0):
                produced[user] = ts
        self.produced_at = produced
        return await super().process_batch(events)

    def iter_windows(self) -> Iterator[tuple[str, BehaviorWindow]]:
        """Every window in this worker's local store (the partitions it holds).

        Only the keys are listed up front (tens of bytes each, even for a
        million users); each window is read when its turn comes, so a slow
        sweep submits the user's current window, not a copy from its start.
        """
        data = self.table.data
        for key in list(data.keys()):
            if isinstance(key, (bytes, bytearray)) and is_reserved_key(bytes(key)):
                continue  # the partition's positions record, not a user
            value = data.get(key)
            if value is None:  # forgotten or moved to another worker since
                continue
            try:
                window = BehaviorWindow.from_bytes(bytes(value), self.config)
            except StateCodecError:
                log.warning("skipping a corrupt window for key %r", key[:64])
                continue
            user = key.decode("utf-8") if isinstance(key, bytes) else str(key)
            yield user, window


class _ForgottenFilter:
    """Drops stale output records of recently forgotten users (right to be forgotten).

    Maps user -> forget time (epoch ms), newest last, at most
    :data:`FORGET_FILTER_USERS` users. A record encoded from a window taken
    before the forget (a flush in flight) is stale and dropped, so the tombstone
    stays the user's last record; records of a new life carry a ``produced_at``
    (Kafka time of their newest event) at or after the forget time.
    """

    def __init__(self) -> None:
        self.at: OrderedDict[str, int] = OrderedDict()

    def note(self, users: Mapping[str, int]) -> None:
        """Remember each user's forget time (the oldest are dropped beyond the limit)."""
        for user, at in users.items():
            self.at[user] = at
            self.at.move_to_end(user)
        while len(self.at) > FORGET_FILTER_USERS:
            self.at.popitem(last=False)

    def keep(self, key: bytes, value: bytes | None) -> bool:
        """False for a non-tombstone record of a forgotten user produced before the forget."""
        at = self.at.get(key.decode("utf-8", errors="replace"))
        if at is None or value is None:
            return True
        produced = json.loads(value).get("produced_at")
        return produced is not None and int(produced) >= at


def _schedule(worker: ReencodingWorker, reencoder: Reencoder) -> None:
    """Run the re-encode loop as an app task, and the start-up sweep / hot reload on a timer."""
    app = worker.app
    model_dir = worker.settings.model_dir
    swept = False

    async def reencode_loop() -> None:
        try:
            await reencoder.run()
        except asyncio.CancelledError:
            # shutdown: publish what is already applied, then stop
            await asyncio.shield(reencoder.drain(timeout=10.0))
            reencoder.close()
            if worker.explainer is not None:
                worker.explainer.close()  # and its own encoder process, if one was started
            raise

    async def watch_model() -> None:
        nonlocal swept
        if not swept and worker.held_partitions() and not app.rebalancing:
            # once per start: re-send every local user (outputs lost with a crash)
            swept = True
            n = await reencoder.sweep(worker.iter_windows(), per_second=STARTUP_SWEEP_PER_S)
            log.info("startup sweep re-encoded %d local users", n)
        if model_dir is not None and await reencoder.maybe_reload(Path(model_dir)):
            n = await reencoder.sweep(worker.iter_windows(), per_second=STARTUP_SWEEP_PER_S)
            log.info("re-encoded %d local users with model %s", n, reencoder.model.model_version)

    app.task(reencode_loop)
    app.timer(interval=MODEL_POLL_S)(watch_model)


def attach_reencoder(worker: ReencodingWorker, model: Encoder) -> Reencoder:
    """Wire a re-encode loop into ``worker``: batch hook, forget hook, flush task, hot reload.

    Every re-encoded user is published to the compacted output topic
    (``INTEREST_OUTPUT_TOPIC``); a forgotten user gets a tombstone there, and
    records of that user still in flight from before the forget are dropped.
    Call before the worker's app starts.

    Args:
        worker: The worker whose batches and forget commands drive the loop.
        model: The encoder to start with (replaced when a newer checkpoint
            appears in ``INTEREST_MODEL_DIR``).

    Returns:
        The :class:`~interest_stream.streams.reencode.Reencoder` now attached.
    """
    s = worker.settings
    app = worker.app
    out_topic = s.output_topic
    forgotten = _ForgottenFilter()

    async def publish(records: Sequence[tuple[bytes, bytes | None]]) -> None:
        producer = app.producer
        if forgotten.at:
            records = [(k, v) for k, v in records if forgotten.keep(k, v)]
        futures = [await producer.send(out_topic, k, v, None, None, None) for k, v in records]
        await asyncio.gather(*futures)

    reencoder = Reencoder(
        model,
        publish,
        flush_ms=s.flush_ms,
        batch_max=s.encode_batch_max,
        long_refresh_s=s.long_refresh_s,
        long_refresh_per_flush=s.long_refresh_per_flush,
        loader=lambda p: _load_model(p, s),
        registry=worker.metrics.registry,
    )

    own = s.explain_encoder == "own" and s.model_dir is not None and s.use_encode_process()
    model_dir = s.model_dir
    explainer = Explainer(
        lambda: reencoder.model,
        cache_users=s.explain_cache_users,
        metrics=worker.metrics,
        loader=(lambda: _load_model(Path(str(model_dir)), s, s.explain_nice)) if own else None,
    )
    # the own encoder loads on the first explanation (none at start: a worker nobody asks
    # why costs no second process, and the first run's start stays as fast)
    worker.explainer = explainer

    new_items = _new_item_publisher(worker, lambda: reencoder.model)

    async def on_batch(windows: Mapping[str, BehaviorWindow]) -> None:
        await reencoder.submit(windows, worker.produced_at)
        if new_items is not None:  # items born after the checkpoint (streams/new_items.py)
            await new_items.follow_async(reencoder.model.model_version)
            new_items.observe(windows)

    async def on_forget(users: Mapping[str, int]) -> None:
        for user in users:
            reencoder.forget(user)
            explainer.forget(user)
        forgotten.note(users)
        producer = app.producer
        futures = [await producer.send(out_topic, *tombstone(u), None, None, None) for u in users]
        await asyncio.gather(*futures)

    worker.on_batch = on_batch
    worker.on_forget = on_forget
    _schedule(worker, reencoder)
    return reencoder


def _new_item_publisher(
    worker: ReencodingWorker, current: Callable[[], Encoder]
) -> NewItemPublisher | None:
    """The publisher of new items' vectors to the item-vectors topic (needs a checkpoint);
    the items' input embeddings go to the ``current()`` encoder after each publication."""
    s, app = worker.settings, worker.app
    if s.model_dir is None:
        return None
    topic = item_vectors_topic(s)

    async def publish(records: Sequence[tuple[bytes, bytes | None]]) -> None:
        futures = [await app.producer.send(topic, k, v, None, None, None) for k, v in records]
        await asyncio.gather(*futures)

    async def feed(ids: Sequence[str], inputs: Any) -> None:
        model = current()
        update = getattr(model, "update_extra_items", None)
        if update is None:  # the model in this process (a GPU worker)
            from interest_stream.models.extra_items import update_in_process

            update = partial(update_in_process, model)
        try:
            n = await asyncio.to_thread(update, list(ids), inputs)
        except Exception:  # the vectors are published; only the encoder's input lags
            log.exception("new items: the encoder did not take %d input rows", len(ids))
            return
        worker.metrics.new_item_inputs.set(n)
        if worker.explainer is not None:  # its own encoder process too
            await asyncio.to_thread(worker.explainer.update_extra_items, list(ids), inputs)

    def known() -> tuple[Sequence[str], Any]:
        model = current()
        get = getattr(model, "known_item_inputs", None)
        if get is None:  # the model in this process (a GPU worker)
            from interest_stream.models.extra_items import known_inputs

            return known_inputs(model)
        ids, inputs = get()
        return ids, inputs

    try:
        pub = (
            NewItemPublisher(Path(s.model_dir), publish, on_inputs=feed, known_inputs=known)
            if s.new_item_inputs
            else NewItemPublisher(Path(s.model_dir), publish)
        )
    except CheckpointError as exc:
        log.warning("no vectors for new items: %s", exc)
        return None

    async def publish_new_items() -> None:
        await pub.maybe_publish()

    app.timer(interval=pub.interval_s)(publish_new_items)
    return pub


def run(settings: Settings) -> int:
    """Run one worker process, blocking until SIGTERM/SIGINT.

    Args:
        settings: The effective settings (``INTEREST_MODEL_DIR`` unset: state only).

    Returns:
        The process exit code (0 after a clean stop).

    Raises:
        ModelError: The checkpoint cannot be loaded.
        WorkerError: The topics cannot be used (from
            :func:`~interest_stream.streams.worker.run_worker`).
    """
    worker = ReencodingWorker(settings)
    if settings.model_dir is None:
        log.warning("INTEREST_MODEL_DIR is not set: keeping state only, no vectors are published")
    else:
        model = _load_model(Path(settings.model_dir), settings)
        attach_reencoder(worker, model)
        log.info(
            "re-encoding with model %s (dim %d) into %s",
            model.model_version, model.dim, settings.output_topic,
        )  # fmt: skip
    return run_worker(settings, worker=worker)
