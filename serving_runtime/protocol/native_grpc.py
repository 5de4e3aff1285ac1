"""The gRPC frontend on grpc++ (``native/grpc_frontend.cc``), serving the same servicer as grpc.aio.

grpc++'s threads do HTTP/2 and hand whole request messages to the event loop through one eventfd;
this module decodes them, runs ``GrpcInferenceServicer``'s methods and sends the encoded answers
back. Statuses, messages and streaming behaviour are the grpc.aio frontend's, so clients cannot tell
them apart; the difference is the event loop's time per call (docs/serving.md, "Native gRPC
frontend"). Built by ``make native``; without the build the server falls back to grpc.aio.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from shipyard.serving_runtime.protocol.grpc_limits import GrpcLimits
from shipyard.serving_runtime.protocol.grpc_service import MAX_MESSAGE_BYTES, GrpcInferenceServicer
from shipyard.serving_runtime.protocol.native_fast import FastPath
from shipyard.serving_runtime.protocol.service import InferenceService

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
BUILD_HINT = (
    "to get it, install g++, pkg-config and gRPC C++ (Debian/Ubuntu: apt-get install g++ pkg-config libgrpc++-dev) "
    "and reinstall shipyard[serve] (pip builds it), or run `make native` in a checkout"
)


def load_extension() -> Any:
    """The compiled module. Raises: ImportError naming the fix when it was not built or cannot load."""
    try:
        return importlib.import_module("shipyard.serving_runtime.protocol._grpc_native")
    except ImportError as exc:
        raise ImportError(f"the native gRPC frontend is not available ({exc}); {BUILD_HINT}") from None


def unavailable_reason() -> str | None:
    """None when the native frontend can run here, else why not (with the fix)."""
    try:
        load_extension()
    except ImportError as exc:
        return str(exc)
    return None


def connection_cap_reason() -> str | None:
    """None when the built native frontend can cap its connections (grpc++ >= 1.52), else why not."""
    native = load_extension()
    if getattr(native, "CONNECTION_CAP", False):
        return None
    return (
        f"the native gRPC frontend is built against grpc++ {native.GRPC_VERSION}, which cannot cap incoming "
        "connections (grpc >= 1.52 can)"
    )


class _Aborted(grpc.aio.AbortError):
    """``context.abort`` in a servicer method: the call ends with this status and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses; one instance serves every call."""

    __slots__ = ()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


_CONTEXT = _Context()


@dataclass(frozen=True)
class _Method:
    path: str
    streaming: bool
    parse: Callable[[bytes], Any]
    handler: Callable[..., Any]


def _methods(servicer: GrpcInferenceServicer) -> list[_Method]:
    """The service's methods that ``servicer`` implements; unary first, in the C++ module's order."""
    base = service_pb2_grpc.GRPCInferenceServiceServicer
    descriptor = service_pb2.DESCRIPTOR.services_by_name[SERVICE_NAME.split(".")[-1]]
    methods = []
    for method in descriptor.methods:
        if getattr(type(servicer), method.name) is getattr(base, method.name):
            continue  # not implemented here: the C++ side answers UNIMPLEMENTED
        request_cls = getattr(service_pb2, method.input_type.name)
        methods.append(
            _Method(
                path=f"/{SERVICE_NAME}/{method.name}",
                streaming=method.client_streaming or method.server_streaming,
                parse=request_cls.FromString,
                handler=getattr(servicer, method.name),
            )
        )
    return sorted(methods, key=lambda m: m.streaming)


def _code(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class NativeGrpcFrontend:
    """Owns the grpc++ server and the calls it hands to the event loop.

    ``max_inflight``: calls in progress at most (0: no limit); past it a call gets RESOURCE_EXHAUSTED
    from the C++ side at once. ``max_streams_per_connection``: HTTP/2 streams per client connection
    (0: no limit). ``fast_path``: plain ModelInfer requests for eligible models are parsed,
    grouped and answered in C++ (``native_fast.py``). Raises ImportError (with the fix) when the
    module was not built.
    """

    def __init__(
        self,
        service: InferenceService,
        max_inflight: int = 0,
        max_streams_per_connection: int = 0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        fast_path: bool = False,
    ) -> None:
        native = self._module = load_extension()
        self._kinds = (native.MESSAGE, native.HALF_CLOSE, native.CANCEL)
        self.servicer = GrpcInferenceServicer(service)
        self._table = _methods(self.servicer)
        self._native = native.Frontend(
            [m.path for m in self._table if not m.streaming],
            [m.path for m in self._table if m.streaming],
            max_inflight,
            max_streams_per_connection,
            max_message_bytes,
        )
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._streams: dict[int, asyncio.Queue[bytes | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fast: FastPath | None = None
        self._infer_method: _Method | None = None
        if fast_path and not hasattr(self._native, "enable_fast"):
            log.warning("the native gRPC module was built before the ModelInfer fast path; %s", BUILD_HINT)
        elif fast_path:
            index = next((i for i, m in enumerate(self._table) if m.path.endswith("/ModelInfer")), None)
            if index is not None:
                self._fast = FastPath(self._native, service)
                self._infer_method = self._table[index]
                self._native.enable_fast(index)

    @property
    def fast_path(self) -> bool:
        """True when ModelInfer takes the native fast path for eligible models."""
        return self._fast is not None

    @property
    def grpc_version(self) -> str:
        return str(self._module.GRPC_VERSION)

    def start(self, address: str, limits: GrpcLimits | None = None) -> int:
        """Listen on ``address`` (``host:port``) and serve on the running loop; returns the port.

        ``limits``: the idle timeout and connection cap (the cap only where grpc++ has it:
        ``connection_cap_reason()``). Raises OSError naming the address when it cannot be bound.
        """
        idle_ms = 0 if limits is None else max(1, int(limits.idle_timeout_s * 1000))
        cap = 0 if limits is None else limits.max_connections
        if not hasattr(self._module, "CONNECTION_CAP"):  # built from an older grpc_frontend.cc
            log.warning("the native gRPC frontend was built from an older source: no gRPC idle timeout; "
                        "rebuild it with `make native`")  # fmt: skip
            idle_ms = cap = 0
        try:
            port = int(self._native.start(address, idle_ms, cap) if idle_ms or cap else self._native.start(address))
        except RuntimeError as exc:
            raise OSError(str(exc)) from None
        self._loop = asyncio.get_running_loop()
        for fd in self._fds():
            self._loop.add_reader(fd, self._drain)
        return port

    def _fds(self) -> list[int]:
        """The descriptors that wake the loop: messages and groups."""
        return [self._native.fileno()]

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; answer those in progress for up to ``grace_s`` s, then cancel the rest."""
        await asyncio.to_thread(self._native.shutdown, grace_s)
        if self._loop is not None:
            for fd in self._fds():
                self._loop.remove_reader(fd)
            self._drain()  # the cancellations of calls still running at the deadline
        for task in list(self._calls.values()):
            task.cancel()
        if self._fast is not None:
            self._fast.cancel()

    # -- the event loop's side -------------------------------------------------------------------

    def _drain(self) -> None:
        message, half_close, cancel = self._kinds
        loop = self._loop
        assert loop is not None
        calls = self._calls
        left: list[int] = []
        for call_id, kind, index, payload in self._native.take():
            if kind == message:
                method = self._table[index]
                if not method.streaming:
                    calls[call_id] = loop.create_task(self._unary(call_id, method, payload))
                    continue
                queue = self._streams.get(call_id)
                if queue is None:
                    queue = self._streams[call_id] = asyncio.Queue()
                    calls[call_id] = loop.create_task(self._stream(call_id, method, queue))
                queue.put_nowait(payload)
            elif kind == half_close:
                queue = self._streams.get(call_id)
                if queue is not None:
                    queue.put_nowait(None)
            elif kind == cancel:  # the C++ side has answered CANCELLED already
                task = calls.pop(call_id, None)
                self._streams.pop(call_id, None)
                if task is not None:
                    task.cancel()
                elif self._fast is not None:  # a call of a fast-path group
                    left.append(call_id)
        if self._fast is not None:
            batches = self._native.take_batches()
            if batches:
                self._fast.run(batches)
            # after its group (taken in this pass at the latest) has been queued: it leaves the group
            for call_id in left:
                self._fast.cancel_call(call_id)

    async def _unary(self, call_id: int, method: _Method, payload: bytes) -> None:
        send = self._native.send
        try:
            request = method.parse(payload)
            response = await method.handler(request, _CONTEXT)
            data = response.SerializeToString()
        except asyncio.CancelledError:
            pass  # cancelled by the client (or its deadline): already answered
        except Exception as exc:
            send(call_id, None, True, *_status(method, exc))
        else:
            if method is self._infer_method:  # before the answer: a client that has it finds the model registered
                assert self._fast is not None
                self._fast.observe(request.model_name, request.model_version)
            send(call_id, data)
        finally:
            self._calls.pop(call_id, None)

    async def _stream(self, call_id: int, method: _Method, queue: asyncio.Queue[bytes | None]) -> None:
        send = self._native.send

        async def requests() -> AsyncIterator[Any]:
            while (payload := await queue.get()) is not None:
                yield method.parse(payload)

        try:
            async for response in method.handler(requests(), _CONTEXT):
                send(call_id, response.SerializeToString(), False)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            send(call_id, None, True, *_status(method, exc))
        else:
            send(call_id, None, True)
        finally:
            self._calls.pop(call_id, None)
            self._streams.pop(call_id, None)


def _status(method: _Method, exc: Exception) -> tuple[int, str]:
    """The gRPC status code and message that end a call (unary or stream) which raised ``exc``."""
    if isinstance(exc, _Aborted):
        return _code(exc.code), exc.details
    name = method.path.rsplit("/", 1)[-1]
    if isinstance(exc, DecodeError):
        message = f"the {name} request is not a valid protobuf message of the method's request type: {exc}"
        return _code(grpc.StatusCode.INVALID_ARGUMENT), message
    log.exception("unexpected error in gRPC %s", name)
    return _code(grpc.StatusCode.INTERNAL), f"internal error: {type(exc).__name__}: {exc}"
