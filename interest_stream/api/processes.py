"""Several API processes behind one port (``INTEREST_API_PROCESSES``).

The parent starts ``n`` children (``spawn``: no forked FAISS or Kafka state); each child
is a whole replica (its own checkpoint, user index and output-topic consumer, as
:mod:`.consumer` describes) listening on the same port with ``SO_REUSEPORT``: the kernel
hands each new connection to one of them by a hash of its addresses (with one shared
socket, the process that wakes first takes a whole burst of connections), and a
request is answered by the process that holds its connection.
The parent forwards SIGINT/SIGTERM to the children; when one child ends, the others are
stopped and the parent exits with its code (the supervisor restarts the service).
Design and figures: docs/DESIGN.md, docs/RESULTS.md (issue #13, API latency).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["bind_socket", "exit_with_parent", "run_processes", "serve_child"]

logger = logging.getLogger(__name__)

ChildTarget = Callable[..., None]
"""``target(index, *args)``: runs one child (a module-level function: it is pickled)."""


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` of one process (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def exit_with_parent() -> None:
    """Stop this child (SIGTERM to itself) when its parent is gone: a parent killed with
    SIGKILL cannot stop its children, which would go on serving and consuming. (The
    parent's sentinel pipe closes when it dies, even before the child got here.)"""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent process is gone
        logger.warning("API parent process %s is gone: stopping", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="api-parent-watch", daemon=True).start()


def run_processes(n: int, target: ChildTarget, *args: Any) -> int:
    """Run ``target(i, *args)`` in ``n`` spawned children until one ends or a
    SIGINT/SIGTERM arrives; returns the exit code (the first child's to end, 0 on a signal).
    """
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=target, args=(i, *args), name=f"interest-api-{i}")
                for i in range(n)]  # fmt: skip
    for child in children:
        child.start()
    logger.info("API: %d processes (%s)", n, ", ".join(str(c.pid) for c in children))
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        while not stopping:
            ended = [c for c in children if not c.is_alive()]
            if ended:
                code = ended[0].exitcode or 1
                logger.error("API process %s ended (code %s): stopping the others",
                             ended[0].pid, ended[0].exitcode)  # fmt: skip
                break
            time.sleep(0.2)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: uvicorn shuts down gracefully
        deadline = time.monotonic() + 20.0
        for child in children:
            child.join(max(0.1, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(5.0)
        for s, handler in old.items():
            signal.signal(s, handler)
    return code


def serve_child(index: int, settings: Any, app_options: dict[str, Any]) -> None:
    """One API process: :func:`~.app.create_app` served by uvicorn on the shared port."""
    import uvicorn

    from interest_stream.api.app import create_app
    from interest_stream.logs import configure_logging

    configure_logging(str(getattr(settings, "log_level", "INFO")),
                      json_lines=bool(getattr(settings, "log_json", False)))  # fmt: skip
    logger.info("API process %d starting", index)
    exit_with_parent()
    app = create_app(settings, **app_options)
    sock = bind_socket(settings.api_host, settings.api_port)  # once the app is built
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                            server_header=False)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
