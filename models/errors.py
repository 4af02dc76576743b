"""Errors raised by the models package.

All derive from :class:`ModelError`, itself an
:class:`~interest_stream.core.errors.InterestStreamError`. ``ModelError`` and
``CheckpointError`` are defined in :mod:`interest_stream.core.checkpoint` (the
torch-free checkpoint reader raises them) and re-exported here.
"""

from __future__ import annotations

from interest_stream.core.checkpoint import CheckpointError, ModelError

__all__ = ["CheckpointError", "DataError", "ModelError"]


class DataError(ModelError, ValueError):
    """The events given to training or evaluation cannot be used (too few, wrong split)."""
