"""Limits of the REST frontend: what one client may cost the server, each with a default and a flag.

- ``HttpLimits``: request head size (431), body size and decompressed size (413), how long a client may
  take to send its request head and each piece of its body (the connection is closed / 408), how long
  a keep-alive connection may sit idle, and how many connections may be open at once (beyond it a new
  connection gets 503 and is closed, before it costs more than its socket).
- ``protocol_class(limits)``: uvicorn's httptools protocol with the head-size, head-timeout and
  connection limits (uvicorn has none of them for httptools). The head, body and keep-alive idle
  timeouts cost a request a few clock reads: one timer per server sweeps the connections a few
  times per timeout (``_Sweeper``) instead of timers armed and cancelled per request and per body
  piece, which cost REST add_sub c=1 about a fifth of its throughput.
- ``read_body(request, limits)``: the body, bounded in size and in time between pieces; a client that
  goes away mid-body is a ``RequestCancelled`` (499), not a traceback.
- ``decompress(body, encoding, limits)``: gzip/deflate with the output bounded, off the event loop for
  large inputs.
- ``infer_or_cancel(request, call)``: runs an inference and cancels it (it leaves the model's queue)
  when the HTTP client disconnects while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shipyard.serving_runtime.errors import InvalidArgument, RequestCancelled, ServingError

log = logging.getLogger(__name__)
T = TypeVar("T")

DISCONNECT_HOOKS = "shipyard.disconnect_hooks"  # scope key: callables run when the client's connection is lost
CONNECTION = "shipyard.connection"  # scope key: our protocol (read_body registers its stall callback there)
_INLINE_DECOMPRESS_BYTES = 64 * 1024  # smaller compressed bodies are inflated on the loop (cheaper than a thread hop)


def default_max_connections() -> int:
    """The default connection cap of each protocol (REST and gRPC): 4096, or fewer when the process may
    not open that many files: half of the open-files limit less 256 (kept for models and logs), so that
    REST and gRPC together cannot run the process out of descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, (soft - 256) // 2))


@dataclass(frozen=True)
class HttpLimits:
    """REST limits; every field has a ``--http-...`` flag (``cli.py``). Sizes in bytes, times in seconds."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 256 * 1024 * 1024
    max_decompressed_bytes: int = 256 * 1024 * 1024
    header_timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    max_connections: int = field(default_factory=default_max_connections)

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_body_bytes", "max_decompressed_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class PayloadTooLarge(ServingError):
    """A request body (or what it decompresses to) beyond the server's limit."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "REJECTED"


class BodyTimeout(ServingError):
    """The client stopped sending its body."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"
    reason = "REJECTED"


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = ('{"error": "' + message.replace('"', "'") + '"}').encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


class _Sweeper:
    """One timer per server that enforces the head, body and idle timeouts of every connection.

    A connection stamps the time its request head started arriving, the time of its last body piece
    and the time its last response ended; every ``interval`` (a quarter of the shortest timeout, at
    most 1 s) the sweep closes a connection whose head is overdue or that sat idle too long, and
    times out a body read that stalled (read_body's callback). A limit is enforced between its
    value and its value plus ``interval``."""

    def __init__(self, limits: HttpLimits) -> None:
        shortest = min(limits.header_timeout_s, limits.body_timeout_s, limits.idle_timeout_s)
        self.interval = min(1.0, max(0.01, shortest / 4))
        self.handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[Any] = set()

    def ensure(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Keep sweeping while ``connections`` (uvicorn's set of open connections) is not empty."""
        if self.handle is None or self.loop is not loop:
            self.loop, self.connections = loop, connections
            self.handle = loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        for connection in list(self.connections):
            check = getattr(connection, "check_timeouts", None)
            if check is not None:
                check(now)
        self.handle = self.loop.call_later(self.interval, self.sweep) if self.connections else None


def protocol_class(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol bounded by ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    sweeper = _Sweeper(limits)

    class GuardedProtocol(HttpToolsProtocol):
        _head_since: float | None = None  # loop time the pending request head started arriving
        _body_since = 0.0  # loop time of the request's head end or last body piece
        _idle_since: float | None = None  # loop time the last response ended, while no new request came
        _head_bytes = 0
        _refused = False
        body_stalled: Callable[[], None] | None = None  # set by read_body while it waits for the body

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            over = len(self.connections) >= limits.max_connections
            super().connection_made(transport)
            if over:
                self._refused = True
                message = f"too many connections (--http-max-connections {limits.max_connections}); retry later"
                transport.write(_raw_response(503, "Service Unavailable", message))
                transport.close()
                return
            self._head_since = self.loop.time()
            sweeper.ensure(self.loop, self.connections)

        def check_timeouts(self, now: float) -> None:
            """Called by the sweep: close an overdue head, time out a stalled body read."""
            cycle = self.cycle
            between = cycle is None or cycle.response_complete
            if between and self._head_since is not None and now - self._head_since > limits.header_timeout_s:
                log.debug("closing a connection that sent no complete request head in %gs", limits.header_timeout_s)
                self._head_since = None
                self.transport.close()
            elif between and self._idle_since is not None and now - self._idle_since > limits.idle_timeout_s:
                self._idle_since = None  # uvicorn's keep-alive timeout, without its timer per response
                self.transport.close()
            elif not between and cycle.more_body and now - self._body_since > limits.body_timeout_s:
                stalled, self.body_stalled = self.body_stalled, None
                if stalled is not None:
                    stalled()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._head_since is None and (self.cycle is None or self.cycle.response_complete):
                self._head_since = self.loop.time()  # the first bytes of the next request on a keep-alive connection
                self._idle_since = None
            super().data_received(data)

        def on_response_complete(self) -> None:
            # uvicorn's, with the keep-alive timer replaced by the idle stamp the sweep reads
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_since = self.loop.time()

        def _count_head(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > limits.max_header_bytes and not self._refused:
                self._refused = True
                message = f"request header fields larger than {limits.max_header_bytes} bytes (--http-max-header-bytes)"
                self.transport.write(_raw_response(431, "Request Header Fields Too Large", message))
                self.transport.close()

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value) + 4)
            if not self._refused:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_since = None
            self._head_bytes = 0
            self._body_since = self.loop.time()
            if not self._refused:
                super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_since = self.loop.time()
            super().on_body(body)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope[DISCONNECT_HOOKS] = []  # type: ignore[literal-required]
            self.scope[CONNECTION] = self  # type: ignore[literal-required]

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_since = self._idle_since = None
            self.body_stalled = None
            hooks: list[Callable[[], None]] = self.scope.get(DISCONNECT_HOOKS, []) if self.cycle is not None else []  # type: ignore[assignment]
            super().connection_lost(exc)
            for hook in list(hooks):
                hook()

    return GuardedProtocol


async def read_body(request: Any, limits: HttpLimits) -> bytes:
    """The request body, refused past ``limits.max_body_bytes`` (413) or when a piece takes longer than
    ``limits.body_timeout_s`` (408).

    Raises: PayloadTooLarge, BodyTimeout, RequestCancelled (the client went away mid-body),
    InvalidArgument (a malformed Content-Length).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidArgument(f"Content-Length {declared!r} is not an integer") from None
        if size > limits.max_body_bytes:
            raise PayloadTooLarge(_too_large("request body", size, limits.max_body_bytes, "--http-max-body-bytes"))
    connection = request.scope.get(CONNECTION)
    if connection is None:  # another server (an ASGI test transport): a timeout per piece
        return await _read_pieces(request.receive, limits, limits.body_timeout_s)
    # our protocol: its sweep calls ``stalled`` when no piece came for the timeout; no timer per piece
    task = asyncio.current_task()
    timed_out = False

    def stalled() -> None:
        nonlocal timed_out
        timed_out = True
        if task is not None:
            task.cancel()

    connection.body_stalled = stalled
    try:
        return await _read_pieces(request.receive, limits, None)
    except asyncio.CancelledError:
        if not timed_out:
            raise
        if task is not None:
            task.uncancel()
        raise _body_timeout(limits) from None
    finally:
        connection.body_stalled = None


def _body_timeout(limits: HttpLimits) -> BodyTimeout:
    return BodyTimeout(
        f"no request body data for {limits.body_timeout_s:g}s (--http-body-timeout-secs); "
        "send the whole body without pausing"
    )


async def _read_pieces(receive: Callable[[], Awaitable[Any]], limits: HttpLimits, timeout_s: float | None) -> bytes:
    """The body's ASGI messages joined; ``timeout_s``: the longest wait for one (None: no timer)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        if timeout_s is None:
            message = await receive()
        else:
            try:
                message = await _within(receive(), timeout_s)
            except TimeoutError:
                raise _body_timeout(limits) from None
        if message["type"] == "http.disconnect":
            log.debug("client went away while sending its request body")
            raise RequestCancelled("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limits.max_body_bytes:
                raise PayloadTooLarge(_too_large("request body", total, limits.max_body_bytes, "--http-max-body-bytes"))
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """``awaitable`` within ``timeout_s``. ``asyncio.timeout`` (3.11+) costs a timer, where ``wait_for``
    on 3.11 wraps every piece in a task of its own (measured: REST c=1 on add_sub lost ~40%)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, timeout_s)
    async with timeout(timeout_s):
        return await awaitable


def _too_large(what: str, size: int, limit: int, flag: str) -> str:
    shown = f"{size} bytes" if size <= limit + 1 else f"more than {limit} bytes"
    return f"{what} of {shown} is over the limit of {limit} bytes ({flag}); send less per request"


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            _too_large("decompressed request body", limit + 1, limit, "--http-max-decompressed-bytes")
        )
    out += inflater.flush()
    if len(out) > limit:
        raise PayloadTooLarge(_too_large("decompressed request body", len(out), limit, "--http-max-decompressed-bytes"))
    if not inflater.eof:
        raise InvalidArgument("request body is truncated compressed data")
    return out


async def decompress(body: bytes, content_encoding: str | None, limits: HttpLimits) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate), producing at most ``limits.max_decompressed_bytes``.

    Large bodies are inflated in a worker thread, so a compressed bomb never stalls the event loop.
    Raises: InvalidArgument (unknown encoding, corrupt data), PayloadTooLarge.
    """
    if not content_encoding or content_encoding.strip().lower() == "identity":
        return body
    encoding = content_encoding.strip().lower()
    if encoding not in ("gzip", "deflate"):
        raise InvalidArgument(f"unsupported Content-Encoding {content_encoding!r}; use gzip, deflate or none")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        if len(body) <= _INLINE_DECOMPRESS_BYTES:
            return _inflate(body, wbits, limits.max_decompressed_bytes)
        return await asyncio.to_thread(_inflate, body, wbits, limits.max_decompressed_bytes)
    except zlib.error as exc:
        raise InvalidArgument(f"request body is not valid {encoding} data: {exc}") from None


async def infer_or_cancel(request: Any, call: Callable[[], Awaitable[T]]) -> T:
    """Await ``call()``; when the HTTP client disconnects first, cancel it (the request leaves the model's
    queue and never takes a place in a batch) and raise RequestCancelled (499, logged at debug level)."""
    task = asyncio.current_task()
    gone = False

    def went_away() -> None:
        nonlocal gone
        gone = True
        if task is not None:
            task.cancel()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                went_away()
                return

    # Our protocol (protocol_class) calls the scope's hooks when the connection is lost: no task per
    # request. Other servers (tests through ASGI transports) get a task that watches for the disconnect.
    hooks = request.scope.get(DISCONNECT_HOOKS)
    watcher = None
    if hooks is not None:
        hooks.append(went_away)
    else:
        watcher = asyncio.ensure_future(watch())
    try:
        result = await call()
        if gone and task is not None and task.cancelling():
            task.uncancel()  # answered just as the client left: nothing to cancel any more
        return result
    except (asyncio.CancelledError, RequestCancelled):
        if not gone:
            raise
        if task is not None:
            task.uncancel()
        log.debug("client went away while its request waited; cancelled it")
        raise RequestCancelled("the client closed the connection before the response") from None
    finally:
        if watcher is not None:
            watcher.cancel()
        elif went_away in hooks:
            hooks.remove(went_away)


# -- command line ----------------------------------------------------------------------------

_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--http-max-header-bytes", "max_header_bytes", int, "request line and headers at most; beyond: 431"),
    ("--http-max-body-bytes", "max_body_bytes", int, "request body at most (as sent); beyond: 413"),
    ("--http-max-decompressed-bytes", "max_decompressed_bytes", int,
     "a gzip/deflate body may inflate to at most this; beyond: 413"),
    ("--http-header-timeout-secs", "header_timeout_s", float,
     "a connection must send its request line and headers within this, else it is closed (slowloris)"),
    ("--http-body-timeout-secs", "body_timeout_s", float, "longest pause while a body arrives; beyond: 408"),
    ("--http-idle-timeout-secs", "idle_timeout_s", float, "an idle keep-alive connection is closed after this"),
    ("--http-max-connections", "max_connections", int,
     "open REST connections at most; a new one beyond it gets 503 and is closed (default: 4096, or half of "
     "the open-files limit less 256 when lower)"),
)  # fmt: skip


def add_flags(group: Any) -> None:
    """Add the ``--http-*`` limit flags to an argparse group (defaults from ``HttpLimits``)."""
    defaults = HttpLimits()
    for flag, attr, kind, text in _FLAGS:
        default = getattr(defaults, attr)
        group.add_argument(flag, dest=f"http_limit_{attr}", type=kind, default=default, metavar="N",
                           help=f"{text} (default: {default:g})" if attr != "max_connections" else text)  # fmt: skip


def from_args(args: Any) -> HttpLimits:
    """``HttpLimits`` from parsed ``add_flags`` arguments. Raises: ValueError naming a bad value."""
    return HttpLimits(**{attr: getattr(args, f"http_limit_{attr}") for _, attr, _, _ in _FLAGS})
