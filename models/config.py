"""Typed configuration of the interest encoder and of its training (no torch import).

:class:`EncoderConfig` is the architecture (``bert_config()`` maps it onto a stock Hugging Face
``BertConfig``); :class:`TrainConfig` is one field per ``interest-stream train`` option. Both
round-trip through plain JSON (``to_dict``/``from_dict``) into the checkpoint's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum, unique
from typing import TYPE_CHECKING, Any

from interest_stream.core.events import EVENT_TYPE_ALIASES, EVENT_TYPES
from interest_stream.models.errors import ModelError

if TYPE_CHECKING:
    from transformers import BertConfig

__all__ = [
    "DEFAULT_TYPE_WEIGHTS",
    "N_SPECIAL_ITEMS",
    "N_TYPE_IDS",
    "OOV_INDEX",
    "PAD_INDEX",
    "PROTOCOLS",
    "EncoderConfig",
    "LossKind",
    "SeenItems",
    "TaskKind",
    "TrainConfig",
    "type_index",
]

PAD_INDEX = 0
"""Item index of padding (never scored)."""
OOV_INDEX = 1
"""Item index every unknown item id maps to (a learned embedding)."""
N_SPECIAL_ITEMS = 2
"""Rows before the first real item in the encoder's item table."""

PROTOCOLS = ("temporal", "loo")
"""Split protocols of training and evaluation (docs/DESIGN.md, "Evaluation protocol")."""

N_TYPE_IDS = len(EVENT_TYPES) + 1
"""Event-type ids: 0 = padding / summary token, 1.. = :data:`EVENT_TYPES` in order."""

_TYPE_IDS: dict[str, int] = {t: i + 1 for i, t in enumerate(EVENT_TYPES)}
_TYPE_IDS.update({alias: _TYPE_IDS[t] for alias, t in EVENT_TYPE_ALIASES.items()})

DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "fav": 1.5,
    "cart": 2.0,
    "purchase": 2.5,
}
"""Loss weight of a target event by its type: a purchase counts more than a view."""


def type_index(event_type: str) -> int:
    """Event-type id of ``event_type`` (aliases accepted; anything unknown counts as a view).

    Args:
        event_type: ``view``, ``click``, ``cart``, ``fav``, ``purchase`` (or ``pv``/``buy``).

    Returns:
        An id in ``1 .. N_TYPE_IDS - 1``.
    """
    return _TYPE_IDS.get(event_type, 1)


@unique
class LossKind(StrEnum):
    """How the item softmax is computed during training."""

    AUTO = "auto"
    """Full softmax up to ``TrainConfig.full_softmax_max_items`` items, sampled above."""
    FULL = "full"
    """Softmax over every item of the vocabulary."""
    SAMPLED = "sampled"
    """Softmax over the positives plus ``TrainConfig.n_negatives`` shared uniform negatives."""


@unique
class SeenItems(StrEnum):
    """How training treats the items of a user's own history in the softmax."""

    AUTO = "auto"
    """``masked`` when validating on the ``new`` task, else ``plain``."""
    PLAIN = "plain"
    """Like any other item (all in the full softmax; drawn uniformly in the sampled one)."""
    HARD_NEGATIVES = "hard_negatives"
    """Sampled softmax: every history item is added to the row's negatives."""
    MASKED = "masked"
    """Left out, like the ``new``-items evaluation leaves them out of the ranking."""


@unique
class TaskKind(StrEnum):
    """Which evaluation task a validation or report refers to."""

    ALL = "all"
    """Every item the user touches after the cutoff (re-views and re-purchases count)."""
    NEW = "new"
    """Only items the user had not touched before the cutoff; seen items are not ranked."""


@dataclass
class EncoderConfig:
    """Architecture of :class:`models.encoder.InterestEncoder`.

    Attributes:
        dim: Size of the item / interest space (item vectors, short and long vectors).
        d_model: Hidden size of the transformer layers.
        n_heads: Attention heads per layer (must divide ``d_model``).
        n_layers_short: Transformer layers of the short-term path.
        n_layers_long: Transformer layers of the long-term path.
        ffn_mult: Feed-forward width as a multiple of ``d_model``.
        dropout: Dropout of embeddings, attention and feed-forward layers.
        short_max_len: The short path reads at most this many newest events.
        long_max_len: The long path reads at most this many newest events.
        n_age_buckets: Log2-second buckets for the age of an event (relative to
            the newest event of the window).
        attention_dropout: Dropout of the attention probabilities.
        identity_dim: Last coordinates of every item vector that are a fixed random
            code of the item (0 = none); must be smaller than ``dim``.
        long_half_life_hours: Optional fixed recency decay of the long-term pooling
            weights (an event this many hours older than the newest one weighs half
            as much); ``None`` = no recency weighting. A long half-life keeps the
            long vector a long-term profile: a burst of recent events cannot dominate it.
        revisit_dim: Size of the *revisit channel* appended to every vector (0 = none).
            Each item gets a fixed random code of this size; the long-term vector's
            channel is the recency- and type-weighted mean of the codes of the items
            in the user's history, times a gain chosen on the validation split, so
            the vector's inner product with an item's vector adds a "the user keeps
            coming back to this item" score (approximately: random codes are only
            nearly orthogonal; more dimensions, less cross-talk); a negative gain says
            "the user does not come back" (MovieLens). The short vector's
            channel is zero. Vectors are ``dim + revisit_dim`` long.
        revisit_half_life_hours: Recency decay of the revisit channel: an event this
            many hours older than the user's newest event weighs half as much.
        trend: Append one *trend* coordinate: on the item side how popular the item
            was in the last days of the training data (``log1p`` of its events, unit
            variance over items), on the user side one gain (the same in the short and
            long vectors, so also for users without history). The window (1, 3 or 7
            days) and the gain are chosen on the validation split. A checkpoint's trend
            is frozen at its training time: retrain (hot reload) to follow new trends.
    """

    dim: int = 64
    d_model: int = 64
    n_heads: int = 2
    n_layers_short: int = 2
    n_layers_long: int = 1
    ffn_mult: int = 2
    dropout: float = 0.1
    short_max_len: int = 50
    long_max_len: int = 200
    n_age_buckets: int = 26
    attention_dropout: float = 0.0
    long_half_life_hours: float | None = None
    identity_dim: int = 0
    revisit_dim: int = 0
    revisit_half_life_hours: float = 48.0
    trend: bool = False

    @property
    def out_dim(self) -> int:
        """Size of every vector the encoder publishes: ``dim + revisit_dim (+ 1 with trend)``."""
        return self.dim + self.revisit_dim + int(self.trend)

    def __post_init__(self) -> None:
        """Check the sizes at once, naming the offending field."""
        for name in ("dim", "d_model", "n_heads", "ffn_mult", "short_max_len", "long_max_len"):
            if getattr(self, name) < 1:
                raise ModelError(f"EncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_layers_short", "n_layers_long"):
            if getattr(self, name) < 1:
                raise ModelError(f"EncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ModelError(
                f"EncoderConfig.d_model ({self.d_model}) must be a multiple of n_heads "
                f"({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"EncoderConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.n_age_buckets < 2:
            raise ModelError("EncoderConfig.n_age_buckets must be >= 2")
        if not 0 <= self.identity_dim < self.dim:
            raise ModelError(
                f"EncoderConfig.identity_dim must be in [0, dim), got {self.identity_dim}"
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ModelError("EncoderConfig.attention_dropout must be in [0, 1)")
        if self.long_half_life_hours is not None and self.long_half_life_hours <= 0:
            raise ModelError("EncoderConfig.long_half_life_hours must be > 0 or None")
        if self.revisit_dim < 0:
            raise ModelError(f"EncoderConfig.revisit_dim must be >= 0, got {self.revisit_dim}")
        if self.revisit_half_life_hours <= 0:
            raise ModelError("EncoderConfig.revisit_half_life_hours must be > 0")

    def bert_config(self, n_layers: int, max_positions: int) -> BertConfig:
        """The Hugging Face config of one transformer path.

        The word-embedding table is unused (inputs arrive as ``inputs_embeds``),
        token types carry the event type and position ids the reverse position
        (0 = summary token, 1 = newest event).

        Args:
            n_layers: Number of transformer layers.
            max_positions: Size of the position table (window cap + 1).

        Returns:
            A ``BertConfig`` using PyTorch SDPA attention.
        """
        from transformers import BertConfig

        cfg = BertConfig(  # type: ignore[no-untyped-call]
            vocab_size=1,
            hidden_size=self.d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=self.n_heads,
            intermediate_size=self.d_model * self.ffn_mult,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            max_position_embeddings=max_positions,
            type_vocab_size=N_TYPE_IDS,
            pad_token_id=0,
            attn_implementation="sdpa",
        )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Build from :meth:`to_dict` output; unknown keys are refused.

        Raises:
            ModelError: A key is not a field of this class.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"unknown EncoderConfig fields {unknown}")
        return cls(**data)


@dataclass
class TrainConfig:
    """How ``interest-stream train`` fits a checkpoint.

    The split is temporal: only events before the ``cutoff_quantile`` of event
    time are used (the rest is left for ``interest-stream evaluate``); the last
    ``val_fraction`` of that training period is the validation period for early
    stopping. With ``refit`` the model is then retrained from scratch on the
    whole training period for the best number of epochs.

    Attributes:
        encoder: Architecture of the encoder.
        epochs: Most epochs of the early-stopping phase.
        patience: Epochs without a better validation NDCG@10 before stopping.
        min_epochs: Epochs always run before early stopping may stop.
        batch_size: Next-item examples per step.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        scalar_lr_mult: Learning-rate multiplier of the scalar parameters (copy gains,
            identity scale; no weight decay on them). Their useful values are ~10x their
            init, which the base rate reaches only after many epochs. The library default
            stays 1 (the short-vs-long burst test is validated with it); ``interest-stream
            train`` uses 20 (``--scalar-lr-mult``), which the recorded results used.
        seed: Seed of every random draw (init, shuffling, dropout, sampling).
        device: ``auto`` (cuda if available, else cpu), ``cpu`` or ``cuda``.
        threads: ``torch.set_num_threads`` for training; ``None`` leaves it alone.
        cutoff_quantile: Train only on events before this quantile of event time
            (0.8 = the default evaluation cutoff; 1.0 = use every event, for
            production models that will not be evaluated on this file).
        val_fraction: Share of the training period (by event count, at its end)
            used to validate; 0 disables early stopping and runs ``epochs``.
        val_task: Validation task (``all`` or ``new``) of the early-stopping metric.
        refit: Retrain on the whole training period for the best epoch count.
        short_window_events: Short window: at most this many latest events
            (the worker's ``INTEREST_SHORT_WINDOW_EVENTS``).
        short_window_minutes: Short window: events within this many minutes of the
            newest (the worker's ``INTEREST_SHORT_WINDOW_MINUTES``).
        long_history_events: Long history: at most this many latest events.
        long_horizon_hours: The long and blended vectors learn to predict every item
            of the user's next ``long_horizon_hours`` of activity, from their next
            event on (not only the next item).
        session_gap_minutes: A gap longer than this starts a new session; the
            long-term objective is applied at every session start.
        long_within_session_rate: Share of the other events also used as
            long-term prediction points (resampled each epoch).
        max_long_targets: Most target items of one long-term prediction point.
        type_weights: Loss weight of a target by its event type.
        type_loss_weight: Weight of the auxiliary next-event-type head.
        long_loss_weight: Weight of the long-term (next days) loss.
        blend_loss_weight: Weight of the blended-vector (next days) loss.
        blend_alpha: Weight of the short vector in the blend (``models.blend``) during
            training.
        select_alpha: With validation, also try the blend alphas 0, 0.1, ..., 1 on the
            validation split every epoch; early stopping then uses the best of them and
            the checkpoint's ``train.blend_alpha`` (the serving weight) is the one chosen
            at the best epoch (the trained value is kept in ``blend_alpha_selection``).
        loss: Full or sampled softmax (``auto`` decides by vocabulary size).
        seen_items: History items in the softmax: plain, hard negatives or masked out.
        n_negatives: Shared negatives per step of the sampled softmax.
        full_softmax_max_items: ``auto`` uses the full softmax up to this many items.
        item_dropout: Probability to replace an input item by the OOV item (teaches
            the OOV embedding and regularises rare items).
        item_text_path: Optional item text: a MovieLens folder (``u.item``) or a
            CSV with ``item_id,text``; enables the MiniLM cold-start path.
        next_item_rate: Share of the events used as next-item examples per epoch
            (resampled each epoch); below 1 makes epochs cheaper where windows are
            long (MovieLens sessions) so the next-days objective gets more steps.
        sample_half_life_days: Optional recency weighting of the training examples:
            an example this many days older than the newest training event counts half
            (items' vectors then follow what is popular now); ``None`` = all equal.
        grad_clip: Gradient-norm clip.
        max_train_seconds: Optional wall-clock budget of the whole training (fit and
            refit): no epoch is started that would, at the pace of the last one, end
            after it.
        revisit_gain: Gain of the revisit channel (``EncoderConfig.revisit_dim``):
            ``None`` = chosen on the validation split together with the blend alpha
            (grid ``interest_stream.models.selection.REVISIT_GAIN_GRID``, then its negatives
            when no positive gain helps; 64 without validation).
        protocol: ``temporal`` (the split above) or ``loo`` (leave-one-out by time,
            :mod:`interest_stream.models.loo`: train on each user's events but the last two,
            validate on the second-last; ``cutoff_quantile`` ignored, ``val_fraction`` only
            switches validation on (> 0) or off, no refit).
        rerank: With validation, fit the repeat-aware re-ranker on the validation split
            (:mod:`interest_stream.models.rerank_fit`) and ship it in the checkpoint.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    epochs: int = 20
    patience: int = 2
    min_epochs: int = 2
    batch_size: int = 1024
    lr: float = 4e-3
    scalar_lr_mult: float = 1.0
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    cutoff_quantile: float = 0.8
    val_fraction: float = 0.1
    val_task: TaskKind = TaskKind.ALL
    refit: bool = True
    short_window_events: int = 50
    short_window_minutes: float = 30.0
    long_history_events: int = 200
    long_horizon_hours: float = 72.0
    session_gap_minutes: float = 30.0
    long_within_session_rate: float = 0.1
    max_long_targets: int = 100
    type_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    type_loss_weight: float = 0.2
    long_loss_weight: float = 1.0
    blend_loss_weight: float = 1.0
    blend_alpha: float = 0.5
    select_alpha: bool = True
    loss: LossKind = LossKind.AUTO
    seen_items: SeenItems = SeenItems.AUTO
    n_negatives: int = 4096
    full_softmax_max_items: int = 20_000
    item_dropout: float = 0.05
    item_text_path: str | None = None
    next_item_rate: float = 1.0
    sample_half_life_days: float | None = None
    grad_clip: float = 1.0
    max_train_seconds: float | None = None
    revisit_gain: float | None = None
    protocol: str = "temporal"
    rerank: bool = True

    def __post_init__(self) -> None:
        """Coerce enum strings and check ranges, naming the offending field."""
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        self.val_task = TaskKind(self.val_task)
        self.loss = LossKind(self.loss)
        self.seen_items = SeenItems(self.seen_items)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ModelError(f"TrainConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 < self.cutoff_quantile <= 1.0:
            raise ModelError("TrainConfig.cutoff_quantile must be in (0, 1]")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ModelError("TrainConfig.val_fraction must be in [0, 0.5)")
        if not 0.0 <= self.blend_alpha <= 1.0:
            raise ModelError("TrainConfig.blend_alpha must be in [0, 1]")
        if self.protocol not in PROTOCOLS:
            raise ModelError(
                f"TrainConfig.protocol must be one of {PROTOCOLS}, got {self.protocol!r}"
            )
        if self.revisit_gain is not None and not math.isfinite(self.revisit_gain):
            raise ModelError("TrainConfig.revisit_gain must be a finite number or None")
        if not 0.0 < self.next_item_rate <= 1.0:
            raise ModelError("TrainConfig.next_item_rate must be in (0, 1]")
        if not 0.0 <= self.item_dropout < 1.0:
            raise ModelError("TrainConfig.item_dropout must be in [0, 1)")
        for name in (
            "epochs",
            "batch_size",
            "short_window_events",
            "long_history_events",
            "n_negatives",
            "max_long_targets",
        ):
            if getattr(self, name) < 1:
                raise ModelError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.scalar_lr_mult <= 0:
            raise ModelError("TrainConfig.scalar_lr_mult must be > 0")
        if self.lr <= 0:
            raise ModelError("TrainConfig.lr must be > 0")
        unknown = sorted(set(self.type_weights) - set(EVENT_TYPES))
        if unknown:
            raise ModelError(f"TrainConfig.type_weights has unknown event types {unknown}")

    def type_weight_table(self) -> list[float]:
        """Loss weight per event-type id (index 0 = padding, weight 0)."""
        out = [0.0] * N_TYPE_IDS
        for t in EVENT_TYPES:
            out[type_index(t)] = float(self.type_weights.get(t, 1.0))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy of the fields (enums as their values)."""
        out = asdict(self)
        out["val_task"] = self.val_task.value
        out["loss"] = self.loss.value
        out["seen_items"] = self.seen_items.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys are refused.

        Raises:
            ModelError: A key is not a field of this class.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"unknown TrainConfig fields {unknown}")
        data = dict(data)
        if isinstance(data.get("encoder"), dict):
            data["encoder"] = EncoderConfig.from_dict(data["encoder"])
        return cls(**data)
