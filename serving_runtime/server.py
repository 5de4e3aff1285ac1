"""One process, one event loop: the REST app (uvicorn, httptools), the gRPC servicer (grpc.aio),
the model manager and its poll timer.

Startup: both endpoints listen first (liveness answers while models load), then the manager
loads the repository; readiness turns on when it is done (and, with strict readiness, when every
model is available). SIGTERM or SIGINT: readiness turns off, both endpoints stop accepting, the
requests already accepted finish, the models drain and close, and ``serve`` returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import uvicorn

from shipyard.serving_runtime.errors import ServingError
from shipyard.serving_runtime.protocol import grpc_limits, grpc_service, grpc_watchdog, http_limits, rest, rest_fast
from shipyard.serving_runtime.protocol.grpc_limits import GrpcLimits
from shipyard.serving_runtime.protocol.http_limits import HttpLimits
from shipyard.serving_runtime.protocol.service import InferenceService
from shipyard.serving_runtime.protocol.types import ManagerLike

if TYPE_CHECKING:
    from shipyard.serving_runtime.metrics import UtilizationSampler

log = logging.getLogger("shipyard.serving_runtime")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1

# gRPC calls in progress at most (``--grpc-max-concurrent-rpcs``). grpc answers the excess with
# RESOURCE_EXHAUSTED before any Python work; without a limit a burst queues inside grpc's
# transport (memory grows, callers wait, and grpc core later cancels what is past its own
# pending-call limit). Every call in progress costs the event loop time before it can be answered,
# even with a refusal, so this bound is also the longest line a refusal waits behind: 512 is several
# batches of max_batch_size per instance for a few models, and keeps a refusal during a burst
# within tens of ms (measurements in docs/serving.md, "Overload").
DEFAULT_GRPC_MAX_CONCURRENT_RPCS = 512
# Calls grpc core keeps waiting for the Python server to take them (``--grpc-max-pending-rpcs``;
# grpc's own default is 1000, hard limit 3000). When a burst arrives faster than the server can
# even look at calls, this backlog is where they wait (memory, and latency for everyone); past
# the limit core refuses them at once (CANCELLED), without any Python work. 128 keeps that wait to
# a few ms of the server's time.
DEFAULT_GRPC_MAX_PENDING_RPCS = 128
# HTTP/2 streams one client connection may have open at once (``--grpc-max-streams-per-connection``;
# SETTINGS_MAX_CONCURRENT_STREAMS; grpc's own default is no limit). A client past it waits for a
# stream in its own channel, so one greedy connection cannot fill the server's call limits and
# pending backlog and crowd out every other client; it is also the usual guard against stream
# floods (nginx's default is 128). 128 still lets one connection fill a batch of 128. In the
# benchmark's burst (two connections at 10x capacity) a light client on its own connection had 38-55%
# of its calls refused, at p99 89-153 ms, without it, and 6-23%, at p99 7-40 ms, with it
# (docs/serving.md, "Overload"). Many connections together still reach the limits below.
DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION = 128
# The cyclic garbage collector's thresholds while serving (Python's defaults: 700, 10, 10). Every
# request allocates a few dozen tracked objects (futures, envelopes, coroutines, dicts), so at the
# defaults the collector ran about 200 times a second under load and its full collections walked
# every object the models and libraries hold, 5-15 ms each. With these, the wide MLP at c=64 spent
# 50 ms instead of 270 ms collecting over a run and had no full collection (docs/serving.md,
# "Garbage collection"). Memory is still freed by reference counting as soon as a request ends.
GC_THRESHOLDS = (5_000, 20, 20)
# ``--grpc-frontend``: "native" serves gRPC on grpc++ (protocol/native_grpc.py; built by `make
# native`), "aio" on grpc.aio, "auto" native when it was built, else aio. Same protocol, statuses and
# messages; the native one costs the event loop a fraction of the time per call (docs/serving.md).
GRPC_FRONTENDS = ("auto", "native", "aio")


def choose_grpc_frontend(requested: str, limits: GrpcLimits | None = None) -> str:
    """ "native" or "aio" for ``--grpc-frontend``. Raises: OSError when native is asked for and not built,
    or cannot keep ``limits`` (a connection cap with grpc++ < 1.52)."""
    if requested not in GRPC_FRONTENDS:
        raise OSError(f"unknown gRPC frontend {requested!r}; choose one of {', '.join(GRPC_FRONTENDS)}")
    if requested == "aio":
        return "aio"
    from shipyard.serving_runtime.protocol.native_grpc import unavailable_reason

    reason = unavailable_reason() or (grpc_limits.native_refusal(limits) if limits is not None else None)
    if reason is None:
        return "native"
    if requested == "native":
        raise OSError(reason)
    log.warning("gRPC on grpc.aio: %s", reason)  # once per start: the install lacks the faster frontend
    return "aio"


@dataclass
class ServerOptions:
    """Everything the command line configures (see ``cli.py`` for the flags)."""

    repositories: Sequence[Path | str] = field(default_factory=list)  # str: s3://, gs://, az:// (remote.py)
    model_cache_dir: Path | None = None  # where remote repositories are cached (None: remote.default_cache_dir())
    control_mode: str = "none"
    repository_poll_secs: float = 15.0
    load_models: Sequence[str] = field(default_factory=list)
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = 8081
    strict_readiness: bool = True
    exit_on_error: bool = False
    graceful_shutdown_secs: float = 30.0
    log_level: str = "info"
    grpc_max_concurrent_rpcs: int = DEFAULT_GRPC_MAX_CONCURRENT_RPCS  # 0: no limit
    grpc_max_pending_rpcs: int = DEFAULT_GRPC_MAX_PENDING_RPCS  # 0: grpc's defaults
    grpc_max_streams_per_connection: int = DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION  # 0: no limit
    http_max_concurrency: int = 0  # 0: no limit
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)
    grpc_watchdog_secs: float = 5.0  # native frontend: probe the port this often (grpc_watchdog.py); 0: off
    grpc_frontend: str = "auto"  # GRPC_FRONTENDS
    grpc_fast_path: bool = True  # native frontend: ModelInfer parsed, grouped and answered in C++ (native_fast.py)
    rest_fast_path: bool = True  # plain REST inference parsed, grouped and answered without ASGI (rest_fast.py)
    cache_size_bytes: int = 0  # --cache-config local,size=BYTES; 0: no response cache


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``RuntimeServer`` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn. Raises: OSError naming the address when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _metrics_source(manager: ManagerLike) -> tuple[Callable[[], tuple[bytes, str]], UtilizationSampler]:
    """``GET /metrics``'s renderer (model stats + CPU/GPU utilization) and the sampler to stop."""
    from shipyard.serving_runtime import metrics

    sampler = metrics.UtilizationSampler()
    registry = metrics.build_registry(manager.all_stats, sampler=sampler, process_metrics=True)
    cache = getattr(manager, "response_cache", None)
    if cache is not None:
        from shipyard.serving_runtime.cache import CacheCollector

        registry.register(CacheCollector(cache))
    return (lambda: metrics.render(registry)), sampler


def create_manager(options: ServerOptions) -> ManagerLike:
    """The model manager for ``options`` (serving_runtime/manager.py)."""
    from shipyard.serving_runtime.cache import ResponseCache
    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.remote_store import is_remote

    settings: dict[str, Any] = dict(
        control_mode=options.control_mode,
        startup_models=list(options.load_models),
        exit_on_error=options.exit_on_error,
        response_cache=ResponseCache(options.cache_size_bytes) if options.cache_size_bytes else None,
    )
    if any(is_remote(r) for r in options.repositories):  # object storage: served from a local cache (remote.py)
        from shipyard.serving_runtime.remote import RepositoryMirrors
        from shipyard.serving_runtime.remote_manager import MirroredModelManager

        return MirroredModelManager(RepositoryMirrors(options.repositories, options.model_cache_dir), **settings)
    return ModelManager([str(p) for p in options.repositories], **settings)


class RuntimeServer:
    """REST + gRPC + model manager on the running event loop."""

    def __init__(self, options: ServerOptions, manager: ManagerLike | None = None) -> None:
        self.options = options
        self.manager = manager if manager is not None else create_manager(options)
        self.service = InferenceService(self.manager, strict_readiness=options.strict_readiness)
        self._stop = asyncio.Event()
        self._http: _HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: Any = None
        self._grpc_watchdog: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._sampler: UtilizationSampler | None = None
        self.http_port = options.http_port
        self.grpc_port = options.grpc_port
        self.grpc_frontend = "aio"

    async def start_endpoints(self) -> None:
        """Listen on both ports. Raises: OSError when a port cannot be bound."""
        opts = self.options
        sock = _bind(opts.host, opts.http_port)
        self.http_port = sock.getsockname()[1]
        render_metrics, self._sampler = _metrics_source(self.manager)
        await asyncio.to_thread(self._sampler.start)
        lane = self._rest_lane()
        config = uvicorn.Config(
            rest.build_app(self.service, render_metrics, opts.http_limits, lane.observe if lane else None),
            loop="none",
            http=rest_fast.protocol_class(http_limits.protocol_class(opts.http_limits), lane),
            timeout_keep_alive=int(max(1, opts.http_limits.idle_timeout_s)),
            ws="none",
            lifespan="off",
            log_config=None,
            log_level=opts.log_level,
            access_log=False,
            timeout_graceful_shutdown=int(opts.graceful_shutdown_secs),
            limit_concurrency=opts.http_max_concurrency or None,
        )
        self._http = _HttpServer(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="http-server")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise OSError(f"the HTTP server on port {self.http_port} stopped during startup")
            await asyncio.sleep(0.01)

        address = f"[{opts.host}]:{opts.grpc_port}" if ":" in opts.host else f"{opts.host}:{opts.grpc_port}"
        self.grpc_frontend = choose_grpc_frontend(opts.grpc_frontend, opts.grpc_limits)
        if self.grpc_frontend == "native":
            port = self._start_native_grpc(address)
            if opts.grpc_watchdog_secs > 0:
                self._grpc_watchdog = asyncio.create_task(
                    grpc_watchdog.watch(opts.host, port, self._restart_native_grpc, opts.grpc_watchdog_secs),
                    name="grpc-watchdog",
                )
        else:
            port = await self._start_aio_grpc(address)
        self.grpc_port = port
        log.info(
            "listening: HTTP on %s:%d, gRPC on %s:%d (%s frontend)",
            opts.host,
            self.http_port,
            opts.host,
            port,
            self.grpc_frontend,
        )

    def _rest_lane(self) -> rest_fast.RestLane | None:
        """The REST fast lane, unless ``--no-rest-fast-path`` or ``--http-max-concurrency`` (whose 503s
        are uvicorn's, per ASGI cycle) turn it off."""
        opts = self.options
        if not opts.rest_fast_path:
            return None
        if opts.http_max_concurrency:
            log.info("REST fast lane off: --http-max-concurrency counts ASGI requests")
            return None
        return rest_fast.RestLane(self.service, opts.http_limits)

    def _start_native_grpc(self, address: str) -> int:
        from shipyard.serving_runtime.protocol.native_grpc import NativeGrpcFrontend, connection_cap_reason

        opts = self.options
        if opts.grpc_max_pending_rpcs != DEFAULT_GRPC_MAX_PENDING_RPCS:
            log.warning("--grpc-max-pending-rpcs applies to the aio gRPC frontend only; the native one ignores it")
        self._grpc = NativeGrpcFrontend(
            self.service,
            opts.grpc_max_concurrent_rpcs,
            opts.grpc_max_streams_per_connection,
            fast_path=opts.grpc_fast_path,
        )
        fast = ", ModelInfer fast path on" if self._grpc.fast_path else ""
        log.info("gRPC on grpc++ %s (native frontend)%s", self._grpc.grpc_version, fast)
        if (reason := connection_cap_reason()) is not None:
            log.info("gRPC connections are not capped: %s", reason)
        return self._grpc.start(address, opts.grpc_limits)

    async def _restart_native_grpc(self) -> None:
        """A new grpc++ server on the same port (grpc_watchdog.py: grpc core stopped accepting)."""
        host = self.options.host
        address = f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"
        await self._grpc.stop(1.0)
        self._start_native_grpc(address)

    async def _start_aio_grpc(self, address: str) -> int:
        opts = self.options
        self._grpc = grpc.aio.server(
            options=grpc_service.server_options(opts.grpc_max_pending_rpcs, opts.grpc_max_streams_per_connection)
            + grpc_limits.channel_options(opts.grpc_limits),
            maximum_concurrent_rpcs=opts.grpc_max_concurrent_rpcs or None,
        )
        grpc_service.add_to_server(self._grpc, self.service)
        try:
            port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await self._grpc.start()
        return int(port)

    async def start_models(self) -> None:
        """Load the repository and turn readiness on. Raises: ServingError with --exit-on-error."""
        await self.manager.start()
        self.service.started = True
        if self.options.control_mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_loop(), name="repository-poll")
        log.info("models loaded; server ready=%s", self.service.ready())

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.repository_poll_secs)
            try:
                await self.manager.poll()
            except Exception:
                log.exception("repository poll failed; the models already loaded keep serving")

    def request_stop(self) -> None:
        """Begin graceful shutdown (signal handler). A second request forces it."""
        if self._stop.is_set():
            log.warning("second stop request: dropping requests still in flight")
            if self._http is not None:
                self._http.force_exit = True
            return
        log.info("stopping: no new requests; finishing the ones accepted")
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop accepting, let accepted requests finish, drain and close the models."""
        self.service.shutting_down = True
        if self._grpc_watchdog is not None:
            self._grpc_watchdog.cancel()
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        waits: list[Any] = []
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            waits.append(self._http_task)
        if self._grpc is not None:
            waits.append(self._grpc.stop(self.options.graceful_shutdown_secs))
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("error while stopping an endpoint: %s", outcome)
        try:
            await self.manager.shutdown()
        except Exception:
            log.exception("error while unloading models")
        if self._sampler is not None:
            await asyncio.to_thread(self._sampler.stop)
        log.info("stopped")


async def serve(options: ServerOptions, manager: ManagerLike | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    loop = asyncio.get_running_loop()
    server = RuntimeServer(options, manager)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        try:
            await server.start_endpoints()
        except OSError as exc:
            log.error("%s", exc)
            await server.shutdown()
            return EXIT_STARTUP_FAILED
        starting = asyncio.create_task(server.start_models())
        stopping = asyncio.create_task(server.wait_stopped())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is not None:
            error = starting.exception()
            reason = error.message if isinstance(error, ServingError) else f"{type(error).__name__}: {error}"
            log.error("startup failed: %s", reason)
            stopping.cancel()
            await server.shutdown()
            return EXIT_STARTUP_FAILED
        await stopping
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        await server.shutdown()
        return EXIT_OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(options: ServerOptions) -> int:
    """``serve`` on a fresh event loop (uvloop when installed), with ``GC_THRESHOLDS`` while it
    runs. Returns the exit code."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is in the serve extra
        loop_factory = None
    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                return runner.run(serve(options))
        loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()  # pragma: no cover
        try:  # pragma: no cover - Python 3.10
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(serve(options))
        finally:  # pragma: no cover
            loop.close()
    finally:
        gc.set_threshold(*previous)
