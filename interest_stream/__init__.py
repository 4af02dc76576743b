"""interest-stream: streaming real-time user-interest vectors.

The product is split by responsibility into top-level packages:

* :mod:`streams` owns Kafka, the event contract in motion and per-user state;
* :mod:`models` owns the interest encoder, training and evaluation;
* :mod:`index` owns the FAISS item and user indexes;
* :mod:`interest_stream` holds what they share (settings, errors, the event
  contract and event files) and the thin layers on top (CLI, HTTP API).
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
