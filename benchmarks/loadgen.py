"""Load generator: closed-loop (and, for overload, open-loop) clients in their own processes.

Clients are cheap on purpose: gRPC sends pre-serialized ``ModelInferRequest`` bytes through a raw
``unary_unary`` call with identity serializers; REST posts a pre-built body over keep-alive
connections (aiohttp). Worker processes are started with ``spawn`` (never ``fork``: gRPC state does
not survive a fork) and synchronised on one start time, then each runs a warm-up and a fixed window.
Only requests that complete inside the window count, for throughput and latency alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from benchmarks.common import GRPC_INFER_METHOD, LOOPBACK, lower_priority

# Immediate, explicit refusals: the queue policy's UNAVAILABLE, gRPC's RESOURCE_EXHAUSTED from the
# server's concurrent-call limit, REST's 503 (queue full or the server's concurrency limit).
REJECTION_KINDS = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "503")
# Every way the server refuses a call during a burst: the above, and grpc core's CANCELLED for calls
# past its pending-call limit (refused before any Python work; the client did not cancel them).
REFUSAL_KINDS = (*REJECTION_KINDS, "CANCELLED")

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class LoadSpec:
    """What one client sends: ``protocol`` "grpc" or "rest", to ``port`` on 127.0.0.1.

    For gRPC ``payload`` is a serialized ModelInferRequest; for REST it is the body posted to ``path``
    with ``headers``. ``connections``: gRPC channels (TCP connections) per client process, used in
    turn, as that many separate clients would.
    """

    protocol: str
    port: int
    payload: bytes
    path: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 30.0
    connections: int = 1

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "rest"):
            raise ValueError(f"protocol must be 'grpc' or 'rest', got {self.protocol!r}")
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")


@dataclass
class CellResult:
    """One measurement: throughput (completed requests/s in the window), latency percentiles, errors."""

    concurrency: int
    window_s: float
    completed: int
    errors: int
    throughput: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    error_samples: list[str] = field(default_factory=list)
    client_cpu_s: float | None = None  # the load generator's own CPU time in the window, all processes

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return dict(self.__dict__)


class _Client:
    """One process's connection (gRPC channel or aiohttp session) and its ``send`` coroutine."""

    def __init__(self, spec: LoadSpec, rest_pool_size: int) -> None:
        self.spec = spec
        self.rest_pool_size = rest_pool_size  # REST: keep-alive connections at most
        self._channels: list[Any] = []
        self._calls: list[Any] = []
        self._turn = 0
        self._session: Any = None
        self._url = f"http://{LOOPBACK}:{spec.port}{spec.path}"

    async def open(self) -> None:
        if self.spec.protocol == "grpc":
            import grpc

            # a local subchannel pool per channel: grpc would otherwise share one connection between them
            options = [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
            for _ in range(self.spec.connections):
                channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{self.spec.port}", options=options)
                self._channels.append(channel)
                # No serializers: the payload bytes go out as they are and the reply comes back as bytes.
                self._calls.append(channel.unary_unary(GRPC_INFER_METHOD))
        else:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.rest_pool_size, force_close=False, ttl_dns_cache=None)
            timeout = aiohttp.ClientTimeout(total=self.spec.timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        if self._session is not None:
            await self._session.close()

    async def send(self) -> str | None:
        """Send one request; return None on success, else a short error kind (e.g. ``UNAVAILABLE``, ``503``)."""
        if self.spec.protocol == "grpc":
            import grpc

            self._turn += 1
            try:
                await self._calls[self._turn % len(self._calls)](self.spec.payload, timeout=self.spec.timeout_s)
                return None
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {(exc.details() or '')[:160]}"
        try:
            async with self._session.post(self._url, data=self.spec.payload, headers=dict(self.spec.headers)) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return None
                return f"{resp.status}: {body[:160].decode(errors='replace')}"
        except asyncio.TimeoutError:
            return "TIMEOUT: no response"
        except Exception as exc:  # connection errors count as errors, not crashes
            return f"{type(exc).__name__}: {str(exc)[:160]}"


async def _start_together(client: _Client, conn: Connection) -> tuple[int, float]:
    """Send one request per connection (it opens the connection before the clock starts), report
    ready, then wait for the parent's common start time. Returns how many of those requests
    succeeded and the start time on the monotonic clock."""
    errors = [await client.send() for _ in range(client.spec.connections)]
    conn.send(("ready", next((e for e in errors if e is not None), None)))
    t0: float = conn.recv()
    now = time.monotonic()
    if t0 > now:
        await asyncio.sleep(t0 - now)
    return errors.count(None), t0


# ------------------------------------------------------------------------------------------ closed loop


async def _closed_loop(
    spec: LoadSpec, concurrency: int, conn: Connection, warmup_s: float, window_s: float
) -> dict[str, Any]:
    client = _Client(spec, concurrency)
    await client.open()
    try:
        _, t0 = await _start_together(client, conn)
        window_start = t0 + warmup_s
        window_end = window_start + window_s
        latencies: list[float] = []
        errors: list[str] = []
        cpu: dict[str, float] = {}  # this process's CPU time (all threads) at the window's start and end
        loop_ = asyncio.get_running_loop()

        def mark(key: str) -> None:
            cpu.setdefault(key, time.process_time())

        for key, at in (("start", window_start), ("end", window_end)):
            loop_.call_later(max(0.0, at - time.monotonic()), mark, key)

        async def loop() -> None:
            while True:
                start = time.monotonic()
                if start >= window_end:
                    return
                error = await client.send()
                end = time.monotonic()
                if window_start <= end <= window_end:
                    if error is None:
                        latencies.append(end - start)
                    else:
                        errors.append(error)
                if error is not None:
                    await asyncio.sleep(0.005)  # no hot spin against a failing server

        tasks = [asyncio.create_task(loop()) for _ in range(concurrency)]
        # Bounded: each loop stops issuing at window_end; stragglers get the request timeout.
        _done, pending = await asyncio.wait(tasks, timeout=warmup_s + window_s + spec.timeout_s + 5)
        for task in pending:
            task.cancel()
        cpu_s = cpu["end"] - cpu["start"] if "start" in cpu and "end" in cpu else None
        return {"latencies": np.asarray(latencies, dtype=np.float64), "errors": errors, "cpu_s": cpu_s}
    finally:
        await client.close()


def _report(conn: Connection, work: Any) -> None:
    """Run the coroutine ``work`` and send its result, or the crash, to the parent; close ``conn``."""
    try:
        conn.send(("result", asyncio.run(work)))
    except BaseException as exc:  # report to the parent rather than dying silently
        with contextlib.suppress(Exception):
            conn.send(("crash", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _closed_loop_worker(spec: LoadSpec, concurrency: int, warmup_s: float, window_s: float, conn: Connection) -> None:
    _report(conn, _closed_loop(spec, concurrency, conn, warmup_s, window_s))


def _run_workers(
    target: Callable[..., None], args: list[tuple[Any, ...]], result_timeout_s: float
) -> list[dict[str, Any]]:
    """Spawn one client process per ``args`` entry (``target(*entry, conn)``), start them together
    once all are ready, and return their results in order.

    Raises: RuntimeError if a client process crashes or does not report in time.
    """
    ctx = mp.get_context("spawn")
    workers = []
    try:
        for entry in args:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(*entry, child), daemon=True)
            proc.start()
            child.close()
            workers.append((proc, parent))
        for _, parent in workers:
            _expect(parent, "ready", timeout_s=60)
        t0 = time.monotonic() + 0.2
        for _, parent in workers:
            parent.send(t0)
        return [_expect(parent, "result", timeout_s=result_timeout_s) for _, parent in workers]
    finally:
        _reap(workers)


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


CLIENTS = ("native", "python")


def run_closed_loop(
    spec: LoadSpec, concurrency: int, warmup_s: float, window_s: float, processes: int = 2, client: str = "python"
) -> CellResult:
    """Run ``concurrency`` closed-loop clients (spread over up to ``processes`` processes).

    ``client`` "native": the C++ clients (``benchmarks.native_client``) in one process: gRPC over the
    connections that ``processes`` Python processes would hold (``processes * spec.connections``),
    REST over ``concurrency`` keep-alive connections, as the Python client's pool opens.

    Raises: RuntimeError if a client process crashes or does not report in time, or the native client
    is not built; ValueError for bad arguments.
    """
    if concurrency < 1 or warmup_s < 0 or window_s <= 0:
        raise ValueError(
            f"need concurrency >= 1, warmup_s >= 0, window_s > 0; got {concurrency}, {warmup_s}, {window_s}"
        )
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}; got {client!r}")
    if client == "native" and spec.protocol == "grpc":
        from benchmarks import native_client

        connections = max(1, min(processes, concurrency)) * spec.connections
        latencies_ms, errors, cpu_s = native_client.run_closed_loop(
            spec.port, spec.payload, concurrency, warmup_s, window_s, connections, spec.timeout_s
        )
        return summarize(concurrency, window_s, latencies_ms, errors, cpu_s)
    if client == "native":
        from benchmarks import native_client

        latencies_ms, errors, cpu_s = native_client.run_closed_loop_http(
            spec.port, spec.path, spec.headers, spec.payload, concurrency, warmup_s, window_s, spec.timeout_s
        )
        return summarize(concurrency, window_s, latencies_ms, errors, cpu_s)
    args = [(spec, share, warmup_s, window_s) for share in _split(concurrency, processes)]
    results = _run_workers(_closed_loop_worker, args, result_timeout_s=warmup_s + window_s + spec.timeout_s + 30)
    latencies = np.concatenate([r["latencies"] for r in results]) * 1000.0
    errors = [e for r in results for e in r["errors"]]
    cpus = [r["cpu_s"] for r in results]
    cpu_s = None if any(c is None for c in cpus) else float(sum(cpus))
    return summarize(concurrency, window_s, latencies, errors, cpu_s)


def summarize(
    concurrency: int, window_s: float, latencies_ms: np.ndarray, errors: list[str], client_cpu_s: float | None = None
) -> CellResult:
    """Turn raw latencies (ms), error strings and the client's CPU seconds into a :class:`CellResult`."""
    samples = sorted(set(errors))[:3]
    if latencies_ms.size == 0:
        return CellResult(concurrency, window_s, 0, len(errors), 0.0, None, None, None, None, samples, client_cpu_s)
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return CellResult(
        concurrency,
        window_s,
        int(latencies_ms.size),
        len(errors),
        latencies_ms.size / window_s,
        float(p50),
        float(p90),
        float(p99),
        float(latencies_ms.mean()),
        samples,
        client_cpu_s,
    )


def _expect(conn: Connection, kind: str, timeout_s: float) -> Any:
    if not conn.poll(timeout_s):
        raise RuntimeError(f"a load-generator process did not report {kind!r} within {timeout_s:.0f} s")
    try:
        tag, value = conn.recv()
    except EOFError:
        raise RuntimeError(f"a load-generator process exited before it reported {kind!r}") from None
    if tag == "crash":
        raise RuntimeError(f"a load-generator process crashed: {value}")
    if tag != kind:
        raise RuntimeError(f"load-generator protocol error: expected {kind!r}, got {tag!r}")
    return value


def _reap(workers: list[tuple[Any, Connection]]) -> None:
    for proc, parent in workers:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        parent.close()


# -------------------------------------------------------------------------------------------- open loop


async def _open_loop(
    spec: LoadSpec, rate: float, duration_s: float, max_inflight: int, conn: Connection
) -> dict[str, Any]:
    client = _Client(spec, max_inflight)
    await client.open()
    try:
        warmup_ok, t0 = await _start_together(client, conn)
        total = int(rate * duration_s)
        outcomes: dict[str, int] = {}
        samples: dict[str, str] = {}
        ok_ms: list[float] = []
        rejected_ms: list[float] = []
        refused_ms: list[float] = []
        error_ms: dict[str, list[float]] = {}
        inflight: set[asyncio.Task[None]] = set()
        sent = skipped = 0

        async def one() -> None:
            start = time.monotonic()
            error = await client.send()
            elapsed = (time.monotonic() - start) * 1000.0
            if error is None:
                ok_ms.append(elapsed)
                kind = "ok"
            else:
                kind = error.split(":", 1)[0]
                if kind in REJECTION_KINDS:
                    rejected_ms.append(elapsed)
                if kind in REFUSAL_KINDS:
                    refused_ms.append(elapsed)
                samples.setdefault(kind, error)
                error_ms.setdefault(kind, []).append(elapsed)
            outcomes[kind] = outcomes.get(kind, 0) + 1

        end = t0 + duration_s
        while sent + skipped < total:
            now = time.monotonic()
            if now >= end:
                break
            due = min(total, int((now - t0) * rate))
            while sent + skipped < due:
                if len(inflight) >= max_inflight:
                    skipped += 1  # the client itself could not offer this one
                    continue
                task = asyncio.create_task(one())
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                sent += 1
            await asyncio.sleep(0.001)
        offered_s = time.monotonic() - t0
        if inflight:
            _done, pending = await asyncio.wait(set(inflight), timeout=spec.timeout_s + 5)
            for task in pending:
                task.cancel()
            if pending:  # as the C++ client reports it: only when some were left unanswered
                outcomes["unanswered"] = outcomes.get("unanswered", 0) + len(pending)
        return {
            "sent": sent,
            "warmup_ok": warmup_ok,
            "skipped_client_cap": skipped,
            "offered_s": offered_s,
            "outcomes": outcomes,
            "samples": samples,
            "error_ms": error_ms,
            "ok_ms": np.asarray(ok_ms),
            "rejected_ms": np.asarray(rejected_ms),
            "refused_ms": np.asarray(refused_ms),
        }
    finally:
        await client.close()


def _open_loop_worker(
    spec: LoadSpec, rate: float, duration_s: float, max_inflight: int, niceness: int, conn: Connection
) -> None:
    if niceness:
        lower_priority(niceness)
    _report(conn, _open_loop(spec, rate, duration_s, max_inflight, conn))


def _native_open_loop(
    spec: LoadSpec, rate: float, duration_s: float, max_inflight: int, processes: int, niceness: int
) -> dict[str, Any]:
    """The C++ client's open loop, as one worker's result of :func:`_open_loop`."""
    from benchmarks import native_client

    run = native_client.run_open_loop(
        spec.port, spec.payload, rate, duration_s, max_inflight, processes * spec.connections, spec.timeout_s, niceness
    )
    kinds = np.asarray(["ok" if code == "OK" else code for code in run["codes"]], dtype=object)
    latency_ms = run["latency_ms"]
    outcomes = {str(kind): int(count) for kind, count in zip(*np.unique(kinds, return_counts=True), strict=True)}
    if run["unanswered"]:
        outcomes["unanswered"] = run["unanswered"]
    return {
        "sent": run["sent"],
        "warmup_ok": run["warmup_ok"],
        "skipped_client_cap": run["skipped"],
        "offered_s": run["offered_s"],
        "outcomes": outcomes,
        "samples": run["samples"],
        "error_ms": {
            str(kind): latency_ms[kinds == kind].tolist() for kind in outcomes if kind not in ("ok", "unanswered")
        },
        "ok_ms": latency_ms[kinds == "ok"],
        "rejected_ms": latency_ms[np.isin(kinds, REJECTION_KINDS)],
        "refused_ms": latency_ms[np.isin(kinds, REFUSAL_KINDS)],
    }


def run_open_loop(
    spec: LoadSpec,
    rate: float,
    duration_s: float,
    max_inflight: int = 4096,
    processes: int = 2,
    niceness: int = 0,
    client: str = "python",
) -> dict[str, Any]:
    """Offer ``rate`` requests/s for ``duration_s`` regardless of replies (a burst), then wait for every reply.

    ``niceness`` > 0 runs the client processes at that lower CPU priority (``common.lower_priority``), so that on a
    machine they share with the server they take only the CPU the server leaves. ``client`` "native":
    gRPC from the C++ client, one process over the connections ``processes`` Python processes would
    hold (it can offer several times what they can).

    Returns counts by outcome (``ok``, rejections (``REJECTION_KINDS``), other codes, ``unanswered``),
    latency percentiles of answered and rejected requests, and the rate actually offered.

    Raises: RuntimeError if a client process crashes or does not report in time.
    """
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}; got {client!r}")
    count = max(1, processes)
    if client == "native" and spec.protocol == "grpc":
        results = [_native_open_loop(spec, rate, duration_s, max_inflight, count, niceness)]
    else:
        args = [(spec, rate / count, duration_s, max(1, max_inflight // count), niceness)] * count
        results = _run_workers(_open_loop_worker, args, result_timeout_s=duration_s + spec.timeout_s + 30)
    outcomes: dict[str, int] = {}
    samples: dict[str, str] = {}
    for r in results:
        for key, value in r["samples"].items():
            samples.setdefault(key, value)
        for key, value in r["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + value
    ok_ms = np.concatenate([r["ok_ms"] for r in results])
    rejected_ms = np.concatenate([r["rejected_ms"] for r in results])
    refused_ms = np.concatenate([r["refused_ms"] for r in results])
    error_ms: dict[str, list[float]] = {}
    for r in results:
        for key, values in r["error_ms"].items():
            error_ms.setdefault(key, []).extend(values)
    sent = sum(r["sent"] for r in results)
    warmup_ok = sum(r["warmup_ok"] for r in results)
    offered_s = max(r["offered_s"] for r in results)

    def pct(values: np.ndarray) -> dict[str, float | None]:
        if values.size == 0:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(values.max())}

    return {
        "target_rate": rate,
        "sent": sent,
        "warmup_ok": warmup_ok,  # one connection-opening request per connection, sent before the burst
        "offered_rate": sent / offered_s if offered_s > 0 else 0.0,
        "skipped_client_cap": sum(r["skipped_client_cap"] for r in results),
        "outcomes": outcomes,
        "error_samples": samples,
        "ok_latency": pct(ok_ms),
        "rejected_latency": pct(rejected_ms),
        "refused_latency": pct(refused_ms),  # REFUSAL_KINDS: every refusal, grpc core's CANCELLED included
        "error_latency": {kind: pct(np.asarray(values)) for kind, values in sorted(error_ms.items())},
    }
