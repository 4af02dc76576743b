"""Errors raised by the :mod:`models` package.

All of them derive from :class:`ModelError`, itself an
:class:`~interest_stream.core.errors.InterestStreamError`, so callers can catch the
whole family at once.
"""

from __future__ import annotations

from interest_stream.core.errors import InterestStreamError

__all__ = ["CheckpointError", "DataError", "ModelError"]


class ModelError(InterestStreamError):
    """Something went wrong in the interest encoder, its training or its evaluation."""


class CheckpointError(ModelError):
    """A checkpoint folder is missing a file, is damaged or has another format version.

    Retrain with ``interest-stream train`` (or point ``INTEREST_MODEL_DIR`` at a
    folder written by this version) to fix it.
    """


class DataError(ModelError, ValueError):
    """The events given to training or evaluation cannot be used (too few, wrong split)."""
