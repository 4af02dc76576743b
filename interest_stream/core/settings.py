"""One settings object per process, read from ``INTEREST_*`` environment variables.

Precedence, highest first: explicit keyword arguments, environment variables,
the optional TOML config file named by ``INTEREST_CONFIG_FILE``, then defaults.
Lists are given in the environment as comma-separated strings
(``INTEREST_EVENT_TOPICS=events.view,events.click``).

The README's configuration table is generated from this class
(``interest-stream config --markdown``), so every field carries a description.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from interest_stream.core.errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "load_settings", "settings_environ", "settings_table"]

ENV_PREFIX = "INTEREST_"

DEFAULT_EVENT_TOPICS = (
    "events.view",
    "events.click",
    "events.cart",
    "events.fav",
    "events.purchase",
)


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the ``[interest]`` table (or the top level) of ``INTEREST_CONFIG_FILE``."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        path = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        if path:
            try:
                with open(path, "rb") as fh:
                    raw = tomllib.load(fh)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"INTEREST_CONFIG_FILE={path!r} cannot be read: {exc}") from exc
            table = raw.get("interest", raw)
            self._data = {str(k).lower(): v for k, v in table.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """Every setting of interest-stream; env var = ``INTEREST_`` + upper-case name."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        case_sensitive=False,
    )

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol, passed to every Kafka client."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client private key (mutual TLS).")

    # --- topics ----------------------------------------------------------------
    event_topics: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_EVENT_TOPICS,
        description="Event topics the worker consumes, comma-separated. "
        "A topic named events.<type> implies the event type.",
    )
    topic_partitions: int = Field(
        4, ge=1, le=1024, description="Partitions for topics the project creates."
    )
    dlq_topic: str = Field("events.dlq", description="Dead-letter topic for invalid events.")
    output_topic: str = Field(
        "user-interest", description="Compacted output topic of user vectors (key = user_id)."
    )
    app_id: str = Field(
        "interest-stream",
        description="Worker consumer group / Faust app id; also prefixes internal topics.",
    )
    command_topic: str | None = Field(
        None,
        description="Worker command topic (e.g. forget a user), co-partitioned with the "
        "event topics; unset = <app_id>.commands.",
    )

    # --- state -----------------------------------------------------------------
    state_dir: Path = Field(
        Path(".interest-stream/state"), description="Folder for RocksDB state and snapshots."
    )
    store: Literal["rocksdb", "memory"] = Field(
        "rocksdb", description="Table store of the worker (memory is for tests only)."
    )
    state_memory_mb: int = Field(
        32,
        ge=4,
        le=65_536,
        description="RocksDB memory per state partition held (block cache + memtables), MB.",
    )
    short_window_events: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Short-term window: at most this many latest events (a loaded checkpoint's "
        "own value takes precedence for encoding).",
    )
    short_window_minutes: float = Field(
        30.0,
        gt=0,
        description="Short-term window: events within this many minutes of the newest (a "
        "loaded checkpoint's own value takes precedence for encoding).",
    )
    long_history_events: int = Field(
        200, ge=1, le=100_000, description="Long-term history: at most this many latest events."
    )
    long_half_life_hours: float = Field(
        72.0, gt=0, description="Half-life of the decayed per-type counts of the long-term history."
    )
    dedupe_ids: int = Field(
        256, ge=0, le=100_000, description="Recent event_ids remembered per user for dedupe."
    )
    max_event_bytes: int = Field(
        65_536, ge=256, le=16 * 1024 * 1024, description="Events larger than this go to the DLQ."
    )
    max_future_ms: int = Field(
        86_400_000,
        ge=0,
        description="Events dated more than this many ms after the wall clock go to the DLQ.",
    )

    # --- worker ----------------------------------------------------------------
    batch_max: int = Field(
        2000, ge=1, le=100_000, description="Most events the worker takes from Kafka per batch."
    )
    batch_within_ms: int = Field(
        100, ge=1, le=60_000, description="Longest the worker waits to fill a batch (ms)."
    )
    fetch_max_wait_ms: int = Field(
        50,
        ge=0,
        le=60_000,
        description="Longest the broker holds the worker's fetch when no data is ready (ms).",
    )
    flush_ms: int = Field(
        20, ge=1, le=60_000, description="Re-encode flush interval for touched users (ms)."
    )
    encode_batch_max: int = Field(
        512, ge=1, le=100_000, description="Most users re-encoded in one model call."
    )
    long_refresh_s: float = Field(
        60.0,
        ge=0,
        description="Seconds between two long-term re-encodes of one user (jittered x0.75-1.25).",
    )
    long_refresh_per_flush: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Most cached long-term vectors refreshed per flush (new users always encode).",
    )
    encode_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU threads of the worker's model (0: 1 in a process, else torch's default).",
    )
    encode_process: Literal["auto", "true", "false"] = Field(
        "auto",
        description="Run the worker's model in a child process with its own GIL: auto = "
        "yes unless the model runs on a GPU.",
    )
    explain_cache_users: int = Field(
        2048,
        ge=0,
        le=10_000_000,
        description="Users whose encoded occlusion variants the worker keeps for "
        "explanations (LRU; a new event invalidates a user's); 0 = none.",
    )
    explain_encoder: Literal["own", "shared"] = Field(
        "own",
        description="Explanations' encoder in the worker: own = a second encoder process "
        "(more memory; explanations do not queue behind re-encoding), shared = the "
        "re-encoder's. In-process models (GPU) always share.",
    )
    explain_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Niceness of the explanations' own encoder process (0 = as the worker; "
        "higher: the re-encoder and the API get the CPU first when the machine is busy).",
    )
    new_item_inputs: bool = Field(
        True,
        description="Feed the estimated input embeddings of items the checkpoint does not "
        "know to the worker's encoder (else they stay the OOV row until the next checkpoint).",
    )
    allow_untested_faust: bool = Field(
        False,
        description="Start the worker on faust-streaming/aiokafka versions other than the "
        "tested ones (it patches their internals).",
    )
    worker_web_port: int = Field(
        6066, ge=0, le=65535, description="Worker's metrics/health port (0 = pick a free one)."
    )

    # --- model -----------------------------------------------------------------
    model_dir: Path | None = Field(None, description="Model checkpoint folder (from `train`).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Torch device for the encoder: auto = cuda if available, else cpu."
    )

    # --- API -------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the HTTP API binds.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port the HTTP API binds.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for admin calls (forget a user, reload); unset = disabled."
    )
    max_k: int = Field(1000, ge=1, le=100_000, description="Largest k a query may ask for.")
    api_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest request body (413 above)."
    )
    index_threads: int = Field(
        1, ge=1, le=256, description="FAISS threads per search (1 is best for many small queries)."
    )
    api_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes sharing the port, each a whole replica (its own copy of "
        "the users and the checkpoint, its own consumer of the output topic); metrics are "
        "per process.",
    )
    api_offload_search: bool = Field(
        False,
        description="Run the item searches of /recommendations and /similar in a thread "
        "pool (FAISS without the interpreter lock): more throughput for rank=vector on "
        "one process, more CPU per request.",
    )
    item_scan: Literal["auto", "flat", "sq8", "fp16"] = Field(
        "auto",
        description="How the API searches the catalogue: sq8/fp16 = a compressed copy "
        "(8-bit/16-bit codes) scanned, then the best candidates re-scored on the float32 "
        "vectors until the top k is proven exact (the same answers, fewer bytes read); "
        "flat = the float32 index alone; auto = sq8 from 20,000 items on, else flat.",
    )
    worker_urls: str = Field(
        "",
        description="Comma-separated web addresses of the workers (e.g. http://127.0.0.1:6066), "
        "for explanations (`explain=true`); empty = explanations answer 503.",
    )
    explain_timeout_s: float = Field(
        5.0, gt=0, le=120, description="Seconds the API waits for a worker's explanation."
    )
    explain_max_inflight: int = Field(
        3,
        ge=0,
        le=10_000,
        description="`explain=true` requests the API works on at once; one more is answered "
        "503 explain_unavailable at once (0 = no bound).",
    )

    # --- user store ------------------------------------------------------------
    user_store: Literal["faiss", "opensearch"] = Field(
        "faiss",
        description="Where the API keeps users: faiss = in-process index built from the "
        "output topic; opensearch = the cluster at INTEREST_OPENSEARCH_URL "
        "(filled by `interest-stream opensearch sink`).",
    )
    opensearch_url: str = Field(
        "http://127.0.0.1:9200", description="OpenSearch URL(s) of the user store, comma-separated."
    )
    opensearch_index: str = Field(
        "user-interest", description="OpenSearch index holding the users (user store)."
    )
    opensearch_ef_search: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="HNSW candidates per audience query in opensearch mode (recall vs "
        "latency; a query parameter, no re-index); unset = the store's default.",
    )

    # --- logging ---------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the entry points."
    )
    log_json: bool = Field(False, description="Write logs as JSON lines.")

    @field_validator("encode_process", mode="before")
    @classmethod
    def _tri_state(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            low = value.strip().lower()
            return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false",
                    "off": "false"}.get(low, low)  # fmt: skip
        return value

    def use_encode_process(self) -> bool:
        """Whether the worker's model runs in a child process (resolves ``auto``).

        ``auto`` means yes unless the model will run on a GPU (``device=cuda``, or
        ``auto`` on a machine with an NVIDIA device node): on CPUs the model and
        the event loop otherwise fight over one interpreter lock.
        """
        if self.encode_process != "auto":
            return self.encode_process == "true"
        if self.device == "cuda":
            return False
        return not (self.device == "auto" and os.path.exists("/dev/nvidiactl"))

    @field_validator("event_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        return tuple(value)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.event_topics:
            raise ValueError("INTEREST_EVENT_TOPICS must name at least one topic")
        for topic in self.event_topics:
            if topic in (self.dlq_topic, self.output_topic):
                raise ValueError(
                    f"INTEREST_EVENT_TOPICS contains {topic!r}, which is also the DLQ or "
                    "output topic"
                )
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ValueError("INTEREST_KAFKA_SASL_MECHANISM is required for SASL protocols")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit arguments, then env vars, then the TOML file, then defaults."""
        return (init_settings, env_settings, _TomlFileSource(settings_cls))

    def kafka_client_config(self) -> dict[str, Any]:
        """Security options in the keyword form shared by kafka-python and aiokafka."""
        cfg: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            cfg["sasl_mechanism"] = self.kafka_sasl_mechanism
            cfg["sasl_plain_username"] = self.kafka_sasl_username
            cfg["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_ssl_cafile:
            cfg["ssl_cafile"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            cfg["ssl_certfile"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            cfg["ssl_keyfile"] = str(self.kafka_ssl_keyfile)
        return cfg

    def safe_dump(self) -> dict[str, Any]:
        """All settings as JSON-able values, secrets masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation failures into one clear :class:`ConfigError`."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"{ENV_PREFIX}{loc.upper()}" if err["loc"] else "settings"
            parts.append(f"{env}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(parts)) from exc


def settings_table() -> str:
    """A Markdown table of every setting: env var, default and description."""
    rows = ["| env var | default | description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = "" if default is None else str(default)
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | `{shown}` | {field.description or ''} |")
    return "\n".join(rows)


def settings_environ(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``INTEREST_*`` variables that make a child process read ``settings`` (secrets included).

    Args:
        settings: The settings to pass on.
        base: Environment to start from (default: this process's); its variables
            for the settings' fields are replaced or, for unset fields, removed.
    """
    fields = type(settings).model_fields
    env = dict(os.environ if base is None else base)
    for name in fields:
        env.pop(f"{ENV_PREFIX}{name.upper()}", None)
    env.pop(f"{ENV_PREFIX}CONFIG_FILE", None)
    for name in fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return env
