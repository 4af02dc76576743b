"""API benchmark: latency and throughput of ``/interest`` and ``/recommendations``.

Called by ``interest-stream bench api`` and ``bench/bench_api.py``.

Two child processes on loopback:

* the **server**: :func:`create_app` with ``n_users`` synthetic users in the user
  index and a catalogue (the checkpoint's items, or ``n_items`` synthetic ones
  of the model's dimension) served by uvicorn, as ``interest-stream serve`` does
  (no Kafka: the users are loaded directly);
* the **load generator**: an asyncio HTTP/1.1 keep-alive client (a minimal one by
  default: ``httpx.AsyncClient`` costs more CPU per request than the server on
  this machine; ``client="httpx"`` selects it for comparison). The *fixed-rate* phase is
  an open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened
  before, and its latency counts from that due time (so a stalled server cannot
  hide its queueing - no coordinated omission). The *max-throughput* phase is a
  closed loop of ``concurrency`` connections sending back to back.

Both processes share the machine's cores (2 here), so the max-throughput figure
is a floor for a server with cores of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interest_stream.core.kafka import free_port

__all__ = ["bench_api", "load_phase", "main", "mixed_requests"]

logger = logging.getLogger(__name__)

ENDPOINTS = {
    "interest": "/v1/users/{user}/interest",
    "recommendations": "/v1/users/{user}/recommendations?k=10",
    # the pure vector ranking beside the default (the re-ranker when the checkpoint has one)
    "recommendations_vector": "/v1/users/{user}/recommendations?k=10&rank=vector",
    # with the events behind each item (asks the worker; `bench explain`)
    "recommendations_explain": "/v1/users/{user}/recommendations?k=10&explain=true",
    "mixed": "",  # see MIX
}

OPEN_CONNECTIONS = 32
"""Connections the fixed-rate phase opens before it starts (more open on demand): the
requests take them in turn, as many clients' would, so that several server processes on
one port (connections spread by the kernel) share the load as they would in service."""

Request = tuple[str, str, bytes | None]
"""``(method, path, body)`` of one request."""

MIX: tuple[tuple[str, float], ...] = (
    ("GET /v1/users/{user}/interest", 0.40),
    ("GET /v1/users/{user}/recommendations?k=10&horizon=blend", 0.20),
    ("GET /v1/users/{user}/recommendations?k=10&horizon=short&exclude=purchased", 0.10),
    ("GET /v1/users/{user}/recommendations?k=20&horizon=long", 0.05),
    ("GET /v1/items/{item}/similar?k=10", 0.15),
    ("POST /v1/audience", 0.10),
)
"""The ``mixed`` load: what a recommendation/ads front end asks, in these shares."""


def mixed_requests(
    users: Sequence[str], items: Sequence[str], n: int, rng: random.Random, kind: str = "mixed"
) -> list[Request]:
    """``n`` requests of one endpoint kind (``interest``, ``recommendations``, ``mixed``).

    User and item ids are drawn uniformly from ``users`` / ``items`` (URL-quoted);
    the audience requests ask for the 100 users nearest a catalogue item.
    """
    from urllib.parse import quote

    out: list[Request] = []
    if kind != "mixed":
        template = ENDPOINTS[kind]
        return [("GET", template.format(user=quote(rng.choice(users), safe="")), None)
                for _ in range(n)]  # fmt: skip
    names = [m for m, _ in MIX]
    weights = [w for _, w in MIX]
    for choice in rng.choices(names, weights=weights, k=n):
        method, _, path = choice.partition(" ")
        if method == "POST":
            body = json.dumps({"item_id": rng.choice(items), "k": 100}).encode()
            out.append(("POST", path, body))
            continue
        path = path.format(
            user=quote(rng.choice(users), safe=""), item=quote(rng.choice(items), safe="")
        )
        out.append(("GET", path, None))
    return out


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[bench api] {msg}", file=sys.stderr, flush=True)
    logger.info(msg)


def _summary(lat_s: Sequence[float], errors: int, seconds: float) -> dict[str, Any]:
    arr = np.asarray(lat_s, dtype=np.float64) * 1000.0
    out: dict[str, Any] = {"requests": int(arr.size), "errors": errors,
                           "seconds": round(seconds, 2)}  # fmt: skip
    if arr.size:
        out.update(
            p50_ms=round(float(np.percentile(arr, 50)), 3),
            p90_ms=round(float(np.percentile(arr, 90)), 3),
            p99_ms=round(float(np.percentile(arr, 99)), 3),
            p999_ms=round(float(np.percentile(arr, 99.9)), 3),
            max_ms=round(float(arr.max()), 3),
            throughput_rps=round(arr.size / seconds, 1),
        )
    return out


# --------------------------------------------------------------------------- server
class _GcLog:
    """The server's garbage collections: count and milliseconds per generation, and the
    wall time and length of each full (generation 2) collection (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.ms = [0.0, 0.0, 0.0]
        self.full: list[tuple[float, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        gen = int(info["generation"])
        ms = (time.perf_counter() - self._start) * 1000.0
        self.count[gen] += 1
        self.ms[gen] += ms
        if gen == 2:
            self.full.append((time.time(), round(ms, 3)))

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "ms": [round(m, 1) for m in self.ms], "full": self.full}


def _gc_in(log: dict[str, Any] | None, t0: float, t1: float) -> dict[str, Any] | None:
    """Full collections of the server between wall times ``t0`` and ``t1``."""
    if log is None:
        return None
    pauses = [ms for t, ms in log["full"] if t0 <= t <= t1]
    return {"full_collections": len(pauses), "max_ms": max(pauses, default=0.0)}


def _recent_events(items: Any, n_users: int) -> Any:
    """Per user, 20 ``recent`` events over 8 catalogue items (re-visits, mixed types), so
    that the re-ranker's own-touch features are exercised as with real records."""
    ids = [items.reranker[1].ids[r] for r in range(min(len(items.reranker[1].ids), 50_000))]
    types = ("view", "view", "view", "click", "cart", "fav", "purchase")
    rng = random.Random(5)

    def one(j: int) -> tuple[tuple[str, str, int], ...]:
        own = rng.sample(ids, 8)
        t0 = 1_700_000_000_000 - 20 * 60_000
        return tuple((rng.choice(own), rng.choice(types), t0 + 60_000 * k) for k in range(20))

    return one


def _serve(args: argparse.Namespace) -> None:
    """Child process: build the indexes and serve them with uvicorn (``--processes`` > 1:
    that many replicas on one socket, as ``INTEREST_API_PROCESSES`` runs ``serve``)."""
    import uvicorn

    if args.processes > 1:
        from interest_stream.api.processes import run_processes

        threading.Thread(target=_merge_infos, args=(args,), daemon=True).start()
        sys.exit(run_processes(args.processes, _serve_child, args))
    app, info = _build(args)
    Path(args.info).write_text(json.dumps(info, default=str))
    _log_gc(args.info + ".gc")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                server_header=False)  # fmt: skip


def _serve_child(index: int, args: argparse.Namespace) -> None:
    """One of ``--processes`` replicas: its own indexes, served on the shared port."""
    import uvicorn

    from interest_stream.api.processes import bind_socket, exit_with_parent

    exit_with_parent()
    app, info = _build(args)
    sock = bind_socket("127.0.0.1", args.port)
    info["pid"] = os.getpid()
    Path(f"{args.info}.{index}").write_text(json.dumps(info, default=str))
    _log_gc(f"{args.info}.gc.{index}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def _merge_infos(args: argparse.Namespace) -> None:
    """Write the server's info file once every replica has written its own."""
    files = [Path(f"{args.info}.{i}") for i in range(args.processes)]
    while not all(f.exists() for f in files):
        time.sleep(0.2)
    time.sleep(0.5)  # the last one's socket loop is starting
    infos = [json.loads(f.read_text()) for f in files]
    info = {**infos[0], "processes": args.processes, "pids": [i["pid"] for i in infos],
            "build_s": max(i["build_s"] for i in infos),
            "max_rss_mb": [i["max_rss_mb"] for i in infos]}  # fmt: skip
    Path(args.info).write_text(json.dumps(info, default=str))


def _log_gc(path: str) -> None:
    """Record this process' garbage collections into ``path`` (``_GcLog``, every 0.5 s)."""
    gc_log = _GcLog()
    gc.callbacks.append(gc_log)
    gc_file = Path(path)

    def write_gc() -> None:  # uvicorn ends the process by re-raising SIGTERM: write as we go
        while True:
            time.sleep(0.5)
            gc_file.write_text(json.dumps(gc_log.to_json()))

    threading.Thread(target=write_gc, name="bench-gc-log", daemon=True).start()


def _build(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The app over ``args.users`` synthetic users and the catalogue, and its info."""
    from bench.index import synthetic_users
    from interest_stream.api.app import create_app
    from interest_stream.core.settings import load_settings
    from interest_stream.index import FaissConfig, ItemIndex, UserIndex, UserRecord

    class _NoPublisher:
        def tombstone(self, user_id: str) -> None:
            return None

        def close(self) -> None:
            return None

    t0 = time.perf_counter()
    settings = load_settings(api_host="127.0.0.1", api_port=args.port, max_k=1000)
    scan = settings.item_scan  # INTEREST_ITEM_SCAN, as `serve` reads it
    if args.model_dir:
        items = ItemIndex.from_checkpoint(args.model_dir, scan=scan)
        dim = items.dim
    else:
        dim = args.dim
        vecs, _ = synthetic_users(args.items, dim, n_queries=1, seed=11)
        items = ItemIndex([f"i{j}" for j in range(args.items)], vecs, model_version="synthetic",
                          scan=scan)  # fmt: skip
    short, _ = synthetic_users(args.users, dim, n_queries=1, seed=1)
    long, _ = synthetic_users(args.users, dim, n_queries=1, seed=2)
    users = UserIndex(dim, config=FaissConfig(), blend_weight=items.blend_alpha,
                      model_version=items.model_version)  # fmt: skip
    recent = _recent_events(items, args.users) if items.reranker is not None else None
    for s in range(0, args.users, 10_000):
        e = min(args.users, s + 10_000)
        users.upsert_many([
            UserRecord(f"u{j}", 1, short[j], long[j], 1_700_000_000_000, 1_700_000_000_000,
                       items.model_version, recent=() if recent is None else recent(j))
            for j in range(s, e)
        ])  # fmt: skip
    app = create_app(settings, item_index=items, user_index=users, start_consumer=False,
                     publisher=_NoPublisher(), offload_search=args.offload,
                     fast_path=not args.no_fast_path)  # fmt: skip
    info = {
        "users": users.count(),
        "items": items.count(),
        "dim": dim,
        "build_s": round(time.perf_counter() - t0, 1),
        "user_index": users.stats()["sets"]["blend"],
        "item_index": items.stats()["index"],
        "item_scan": items.stats()["scan"],
        "offload_search": bool(args.offload),
        "fast_path": not args.no_fast_path,
        "processes": 1,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    return app, info


# --------------------------------------------------------------------------- load
class _Conn:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for GETs.

    httpx's asyncio client costs 1.4-3 ms of CPU per request on this machine
    (measured): it cannot offer 500 req/s from one core, so the benchmark would
    measure the client. This one costs ~0.2 ms.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, req: Request, host: str) -> int:
        method, path, body = req
        if body is None:
            self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        else:
            self.writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


class _RawClient:
    """A pool of :class:`_Conn` (opened on demand, up to ``max_conns``), reused in turn
    (first in, first out: the requests spread over every open connection, as many
    clients' would, so a server of several processes sees them all)."""

    def __init__(self, url: str, max_conns: int) -> None:
        hostport = url.split("://", 1)[1].rstrip("/")
        self.host, _, port = hostport.partition(":")
        self.port = int(port or 80)
        self.idle: deque[_Conn] = deque()
        self.open = 0
        self.max = max_conns
        self.freed = asyncio.Event()

    async def get(self, req: Request) -> int:
        while not self.idle and self.open >= self.max:
            self.freed.clear()
            await self.freed.wait()
        reused = bool(self.idle)
        if reused:
            conn = self.idle.popleft()
        else:
            self.open += 1
            try:
                conn = await _Conn.open(self.host, self.port)
            except OSError:
                self.open -= 1
                raise
        try:
            status = await conn.request(req, self.host)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            conn.close()
            if not reused:
                self.open -= 1
                self.freed.set()
                raise
            # a kept-alive connection the server closed meanwhile: retry once on a new one
            try:
                conn = await _Conn.open(self.host, self.port)
                status = await conn.request(req, self.host)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                conn.close()
                self.open -= 1
                self.freed.set()
                raise
        self.idle.append(conn)
        self.freed.set()
        return status

    async def fill(self, n: int) -> None:
        """Open connections up to ``n`` now (the requests then take them in turn)."""
        while self.open < min(n, self.max):
            self.idle.append(await _Conn.open(self.host, self.port))
            self.open += 1

    async def aclose(self) -> None:
        for c in self.idle:
            c.close()


class _HttpxClient:
    """The same interface over ``httpx.AsyncClient`` (for comparison)."""

    def __init__(self, url: str, max_conns: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=max_conns, max_keepalive_connections=max_conns)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0)

    async def get(self, req: Request) -> int:
        method, path, body = req
        return int((await self.client.request(method, path, content=body)).status_code)

    async def aclose(self) -> None:
        await self.client.aclose()


def _client(kind: str, url: str, max_conns: int) -> _RawClient | _HttpxClient:
    return _HttpxClient(url, max_conns) if kind == "httpx" else _RawClient(url, max_conns)


async def _open_loop(
    url: str, paths: list[Request], rate: float, duration: float, kind: str = "raw"
) -> dict[str, Any]:
    n = int(rate * duration)
    lat: list[float] = []
    errors = 0
    client = _client(kind, url, 256)

    async def one(path: Request, due: float) -> None:
        nonlocal errors
        try:
            ok = await client.get(path) == 200
        except Exception:
            ok = False
        if ok:
            lat.append(time.perf_counter() - due)
        else:
            errors += 1

    if isinstance(client, _RawClient):
        await client.fill(OPEN_CONNECTIONS)
    tasks = []
    late = 0
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            late += 1
        tasks.append(asyncio.create_task(one(paths[i % len(paths)], due)))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    await client.aclose()
    out = _summary(lat, errors, seconds)
    out.update(target_rps=rate, late_sends=late)
    return out


async def _closed_loop(
    url: str, paths: list[Request], concurrency: int, duration: float, kind: str = "raw"
) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    client = _client(kind, url, concurrency)
    stop = time.perf_counter() + duration

    async def worker(w: int) -> None:
        nonlocal errors
        i = w
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                ok = await client.get(paths[i % len(paths)]) == 200
            except Exception:
                ok = False
            if ok:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1
            i += concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    seconds = time.perf_counter() - t0
    await client.aclose()
    out = _summary(lat, errors, seconds)
    out["concurrency"] = concurrency
    return out


def _load(args: argparse.Namespace) -> None:
    """Child process: run one load phase and print its JSON summary."""
    rng = random.Random(args.seed)
    users = _ids(args.users_file) or [f"u{j}" for j in range(args.users)]
    items = _ids(args.items_file) or [f"i{j}" for j in range(args.items)]
    paths = mixed_requests(users, items, 50_000, rng, args.endpoint)
    if args.mode == "open":
        warm = asyncio.run(
            _open_loop(args.url, paths[:1000], min(args.rate, 500.0), 1.0, args.client)
        )
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        out = asyncio.run(_open_loop(args.url, paths, args.rate, args.duration, args.client))
    else:
        warm = asyncio.run(_closed_loop(args.url, paths, args.concurrency, 1.0, args.client))
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        out = asyncio.run(
            _closed_loop(args.url, paths, args.concurrency, args.duration, args.client)
        )
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    done = out["requests"] + out["errors"]
    out["warmup_requests"] = warm.get("requests", 0) + warm.get("errors", 0)
    out["warmup_errors"] = warm.get("errors", 0)
    out["client"] = args.client
    out["client_cpu_ms_per_request"] = round(1000 * cpu / max(done, 1), 3)
    print(json.dumps(out))


def _ids(path: str | None) -> list[str]:
    if not path:
        return []
    return [line for line in Path(path).read_text().splitlines() if line]


def load_phase(
    url: str,
    users: Sequence[str],
    items: Sequence[str],
    *,
    rate: float,
    duration: float,
    endpoint: str = "mixed",
    seed: int = 0,
) -> dict[str, Any]:
    """One open-loop load phase against a running API, from a child process.

    Used by ``bench pipeline`` to load the live API while the worker applies
    events. Every non-2xx answer counts as an error.
    """
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        uf, itf = Path(tmp) / "users.txt", Path(tmp) / "items.txt"
        uf.write_text("\n".join(users))
        itf.write_text("\n".join(items))
        out = subprocess.run(
            _module_cmd("load", "--url", url, "--endpoint", endpoint, "--mode", "open",
                        "--rate", str(rate), "--duration", str(duration),
                        "--users-file", str(uf), "--items-file", str(itf), "--seed", str(seed)),
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["endpoint"] = endpoint
    return res


# --------------------------------------------------------------------------- driver
def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("bench server did not become ready")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_sum(pids: Sequence[int]) -> float | None:
    """:func:`_cpu_seconds` summed over the server's processes."""
    got = [_cpu_seconds(p) for p in pids]
    return None if any(c is None for c in got) else sum(c for c in got if c is not None)


def _read_gc(info_file: Path, processes: int) -> dict[str, Any] | None:
    """The server's garbage-collection log (the replicas' summed with ``processes`` > 1)."""
    names = [f"{info_file}.gc"] if processes == 1 else [f"{info_file}.gc.{i}"
                                                         for i in range(processes)]  # fmt: skip
    logs = []
    for name in names:
        try:
            logs.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError):  # not written yet, or caught mid-write
            return None
    return {"count": [sum(g["count"][i] for g in logs) for i in range(3)],
            "ms": [round(sum(g["ms"][i] for g in logs), 1) for i in range(3)],
            "full": sorted(f for g in logs for f in g["full"])}  # fmt: skip


def _module_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.api", *args]


def bench_api(
    n_users: int = 100_000,
    model_dir: Path | str | None = None,
    rate: float = 500.0,
    duration: float = 20.0,
    *,
    n_items: int = 55_000,
    dim: int = 64,
    concurrency: int = 32,
    endpoints: Sequence[str] = ("interest", "recommendations"),
    client: str = "raw",
    seed: int = 0,
    progress: bool = True,
    offload: bool = False,
    fast_path: bool = True,
    processes: int = 1,
) -> dict[str, Any]:
    """Run the API benchmark; returns the figures (JSON-able).

    Args:
        n_users: Users in the user index.
        model_dir: Checkpoint for the catalogue (default: ``n_items`` synthetic items).
        rate: Requests per second of the fixed-rate phase.
        duration: Seconds per phase.
        n_items: Synthetic catalogue size (without ``model_dir``).
        dim: Synthetic vector dimension (without ``model_dir``; the encoder's default 64).
        concurrency: Connections of the max-throughput phase.
        client: ``raw`` (a minimal asyncio HTTP/1.1 keep-alive client, default) or
            ``httpx`` (``httpx.AsyncClient``: ~1.4-3 ms of client CPU per request
            here, so it cannot offer 500 req/s from one core).
        endpoints: Which of ``interest``, ``recommendations`` and ``mixed`` (see
            :data:`MIX`) to load.
        seed: Seed of the request mix.
        progress: Print progress to stderr.
        offload: Item searches in the server's thread pool (``create_app(offload_search=)``).
        fast_path: ``create_app(fast_path=)`` (plain ``/recommendations`` before FastAPI).
        processes: Server processes on the one port (``INTEREST_API_PROCESSES``), each
            holding all ``n_users``; the server CPU figures sum them.

    Returns:
        ``{"server", "params", "machine", "targets"}`` plus, per endpoint,
        ``{"fixed_rate": {...}, "max_throughput": {...}}``.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    windows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        info_file = Path(tmp) / "server.json"
        cmd = _module_cmd(
            "serve", "--port", str(port), "--users", str(n_users), "--items", str(n_items),
            "--dim", str(dim), "--info", str(info_file),
        )  # fmt: skip
        if model_dir is not None:
            cmd += ["--model-dir", str(model_dir)]
        if offload:
            cmd.append("--offload")
        if not fast_path:
            cmd.append("--no-fast-path")
        cmd += ["--processes", str(processes)]
        _say(progress, f"starting the server ({n_users:,} users) on {url} ...")
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(url, server, timeout=600)
            while not info_file.exists():  # every replica built (--processes)
                time.sleep(0.2)
            info = json.loads(info_file.read_text())
            pids = [int(p) for p in info.get("pids", [server.pid])]
            _say(progress, f"server ready: {info}")
            result: dict[str, Any] = {
                "server": info,
                "params": {"users": n_users, "rate": rate, "duration_s": duration,
                           "concurrency": concurrency, "model_dir": None if model_dir is None
                           else str(model_dir)},
                "machine": {"cpus": os.cpu_count(),
                            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
                            "server": f"uvicorn, {processes} process(es), asyncio loop, "
                                      "faiss 1 thread",
                            "client": f"{client} asyncio client, 1 process, HTTP/1.1 keep-alive"},
            }  # fmt: skip
            for ep in endpoints:
                res: dict[str, Any] = {}
                for mode in ("open", "closed"):
                    _say(progress, f"{ep}: {'fixed rate' if mode == 'open' else 'max throughput'} "
                                   f"for {duration:.0f}s ...")  # fmt: skip
                    each0 = [_cpu_seconds(p) or 0.0 for p in pids]
                    cpu0 = _cpu_sum(pids)
                    load0 = round(os.getloadavg()[0], 2)
                    wall0 = time.time()
                    out = subprocess.run(
                        _module_cmd("load", "--url", url, "--endpoint", ep, "--mode", mode,
                                    "--rate", str(rate), "--duration", str(duration),
                                    "--concurrency", str(concurrency), "--users", str(n_users),
                                    "--items", str(n_items),
                                    "--seed", str(seed), "--client", client),
                        check=True, capture_output=True, text=True,
                    )  # fmt: skip
                    key = "fixed_rate" if mode == "open" else "max_throughput"
                    res[key] = json.loads(out.stdout.strip().splitlines()[-1])
                    cpu1 = _cpu_sum(pids)
                    if cpu0 is not None and cpu1 is not None:
                        n_req = res[key]["requests"] + res[key]["errors"]
                        n_req += res[key]["warmup_requests"]
                        res[key]["server_cpu_ms_per_request"] = round(
                            1000 * (cpu1 - cpu0) / max(n_req, 1), 3
                        )
                    if len(pids) > 1:  # how the connections spread over the processes
                        res[key]["server_cpu_s_per_process"] = [
                            round((_cpu_seconds(p) or 0.0) - c, 2)
                            for p, c in zip(pids, each0, strict=True)
                        ]
                    res[key]["loadavg_1m_at_start"] = load0
                    windows.append((ep, key, wall0, time.time()))
                    _say(progress, f"{ep} {key}: {res[key]}")
                result[ep] = res
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        gc_log = _read_gc(info_file, processes)
    if gc_log is not None:
        result["server_gc"] = {"count": gc_log["count"], "ms": gc_log["ms"]}
        for ep, key, t0, t1 in windows:
            result[ep][key]["server_full_gc"] = _gc_in(gc_log, t0, t1)
    p99 = {ep: result[ep]["fixed_rate"].get("p99_ms") for ep in endpoints}
    result["targets"] = {
        "p99_ms_at_fixed_rate": 10.0,
        "met": all(v is not None and v < 10.0 for v in p99.values()),
    }
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.api {serve|load|run}`` (the children, or a run)."""
    p = argparse.ArgumentParser(prog="python -m bench.api")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--users", type=int, default=100_000)
    s.add_argument("--items", type=int, default=55_000)
    s.add_argument("--dim", type=int, default=64)
    s.add_argument("--model-dir", default=None)
    s.add_argument("--info", required=True)
    s.add_argument("--offload", action="store_true", help="item searches in the thread pool")
    s.add_argument("--no-fast-path", action="store_true", help="create_app(fast_path=False)")
    s.add_argument("--processes", type=int, default=1, help="replicas on the one port")
    ld = sub.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--endpoint", choices=sorted(ENDPOINTS), required=True)
    ld.add_argument("--mode", choices=["open", "closed"], required=True)
    ld.add_argument("--rate", type=float, default=500.0)
    ld.add_argument("--duration", type=float, default=20.0)
    ld.add_argument("--concurrency", type=int, default=32)
    ld.add_argument("--users", type=int, default=100_000)
    ld.add_argument("--items", type=int, default=55_000)
    ld.add_argument("--users-file", default=None, help="user ids, one per line")
    ld.add_argument("--items-file", default=None, help="item ids, one per line")
    ld.add_argument("--seed", type=int, default=0)
    ld.add_argument("--client", choices=["raw", "httpx"], default="raw")
    r = sub.add_parser("run")
    r.add_argument("--users", type=int, default=100_000)
    r.add_argument("--model-dir", default=None)
    r.add_argument("--rate", type=float, default=500.0)
    r.add_argument("--duration", type=float, default=20.0)
    r.add_argument("--client", choices=["raw", "httpx"], default="raw")
    r.add_argument("--endpoints", default="interest,recommendations", help="comma-separated")
    r.add_argument("--offload", action="store_true", help="item searches in the thread pool")
    r.add_argument("--no-fast-path", action="store_true", help="create_app(fast_path=False)")
    r.add_argument("--processes", type=int, default=1, help="server processes on the one port")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        _serve(args)
    elif args.cmd == "load":
        _load(args)
    else:
        out = bench_api(args.users, args.model_dir, args.rate, args.duration, client=args.client,
                        endpoints=args.endpoints.split(","), offload=args.offload,
                        fast_path=not args.no_fast_path, processes=args.processes)  # fmt: skip
        print(json.dumps(out, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
