"""interest-stream: streaming real-time user-interest vectors.

One import package, split by responsibility:

* :mod:`interest_stream.core`: what every layer shares (settings, errors, the
  event contract, event files);
* :mod:`interest_stream.streams`: Kafka, events in motion, per-user state, the
  re-encode loop;
* :mod:`interest_stream.models`: the interest encoder, training and evaluation;
* :mod:`interest_stream.index`: the FAISS item and user indexes;
* the top layer: the CLI (:mod:`interest_stream.cli`), the HTTP API
  (:mod:`interest_stream.api`), the client (:mod:`interest_stream.client`), the
  worker process (:mod:`interest_stream.service`) and the demo.

The public contracts (events, records, HTTP API, CLI) are in docs/CONTRACTS.md.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
