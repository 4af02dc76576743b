"""What every ``interest-stream`` verb shares: exit codes, ``--json``, one-line errors.

Contract (docs/CONTRACTS.md, "CLI"): exit code 0 success; 1 a failure while
running; 2 bad usage or configuration (click's own usage errors too); 3 Kafka
unreachable; 4 a missing or invalid input (event file, model checkpoint). An
error is printed as one line ``error: ...`` on stderr, or with ``--json`` as a
JSON object ``{"error": ..., "type": ...}``; Ctrl-C exits with 130.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from interest_stream.core.checkpoint import ModelError
from interest_stream.core.errors import (
    ConfigError,
    EventFileError,
    InterestStreamError,
    KafkaUnavailable,
)
from interest_stream.core.settings import Settings, load_settings
from interest_stream.logs import configure_logging

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_KAFKA",
    "bootstrap_option",
    "cli_settings",
    "emit",
    "exit_code",
    "fail",
    "guard",
    "interrupted",
    "json_option",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_KAFKA = 3
EXIT_INPUT = 4
EXIT_INTERRUPTED = 130

#: ``--bootstrap``: the Kafka bootstrap servers (overrides INTEREST_KAFKA_BOOTSTRAP).
bootstrap_option = click.option(
    "--bootstrap", default=None, help="Kafka bootstrap [env INTEREST_KAFKA_BOOTSTRAP]."
)


def exit_code(exc: InterestStreamError) -> int:
    """The process exit code for a project error.

    Args:
        exc: The error a verb raised.

    Returns:
        ``EXIT_KAFKA``, ``EXIT_CONFIG``, ``EXIT_INPUT`` (bad event file or model
        checkpoint) or ``EXIT_FAILURE``.
    """
    if isinstance(exc, KafkaUnavailable):
        return EXIT_KAFKA
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, EventFileError):
        return EXIT_INPUT
    if isinstance(exc, ModelError):
        return EXIT_INPUT
    return EXIT_FAILURE


def fail(exc: BaseException, as_json: bool) -> NoReturn:
    """Print ``exc`` as one line (or a JSON object) on stderr and exit with its code.

    Args:
        exc: The error to report.
        as_json: Print ``{"error": ..., "type": ...}`` instead of ``error: ...``.

    Raises:
        SystemExit: Always; the code comes from :func:`exit_code` (1 for other errors).
    """
    code = exit_code(exc) if isinstance(exc, InterestStreamError) else EXIT_FAILURE
    if as_json:
        click.echo(json.dumps({"error": str(exc), "type": type(exc).__name__}), err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(code)


def interrupted() -> NoReturn:
    """Say ``interrupted`` on stderr and exit with 130 (Ctrl-C)."""
    click.echo("interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


def emit(data: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print a verb's result on stdout.

    Args:
        data: The result (JSON-serialisable; other values are printed with ``str``).
        as_json: Print indented JSON whatever ``human`` is.
        human: Formats ``data`` for people; without it the JSON is printed.
    """
    if as_json or human is None:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(human(data))


def json_option(f: F) -> F:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (machine-readable).")(f)


def cli_settings(**overrides: Any) -> Settings:
    """The effective settings (``INTEREST_*`` env, then the given options), with logging set up.

    Args:
        **overrides: Settings given on the command line; ``None`` means "not given".

    Raises:
        ConfigError: A setting is invalid.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    s = load_settings(**clean)
    configure_logging(s.log_level, json_lines=s.log_json)
    return s


def guard(as_json: bool, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a project error or Ctrl-C becomes one line on stderr and an exit code.

    Args:
        as_json: Report errors as JSON objects.
        fn: The verb's work.

    Returns:
        What ``fn`` returns.
    """
    try:
        return fn()
    except InterestStreamError as exc:
        fail(exc, as_json)
    except KeyboardInterrupt:
        interrupted()
