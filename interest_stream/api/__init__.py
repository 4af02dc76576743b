"""The HTTP API of interest-stream (FastAPI).

* :func:`create_app` - the application (item index from the checkpoint, user
  index fed by a background consumer of the output topic);
* :func:`serve` - run it with uvicorn (``interest-stream serve``);
* :class:`ApiState` / :func:`get_state` - what the endpoints share;
* :func:`apply_messages` - how output-topic records reach the user index.

FastAPI, uvicorn and prometheus-client are imported with this package.
"""

from __future__ import annotations

from interest_stream.api.app import ApiState, create_app, get_state, serve
from interest_stream.api.consumer import Message, OutputConsumer, apply_messages
from interest_stream.api.errors import ApiError, PublishError
from interest_stream.api.forget import ForgetHook, KafkaPublisher, Publisher

__all__ = [
    "ApiError",
    "ApiState",
    "ForgetHook",
    "KafkaPublisher",
    "Message",
    "OutputConsumer",
    "PublishError",
    "Publisher",
    "apply_messages",
    "create_app",
    "get_state",
    "serve",
]
