"""The REST fast lane: plain binary/JSON ``POST .../infer`` requests without the ASGI app, grouped.

uvicorn's httptools protocol (``http_limits.protocol_class``) is subclassed once more
(``protocol_class``): when a request head is ``POST /v2/models/{m}[/versions/{v}]/infer`` for a
registered model on an idle keep-alive HTTP/1.1 connection, with a ``Content-Length`` and nothing
else unusual (no ``Expect``, ``Transfer-Encoding`` or ``Content-Encoding``), the lane takes it
instead of starting an ASGI cycle. Once its body is complete, the lane parses the inference header
(orjson) and tensors and keeps the request only when the normal path would serve it exactly so:
every input of the model once, its datatype, a fixed item shape, binary data of the exact size or
JSON ``data``, known outputs, no parameters but ``binary_data_output`` / ``binary_data``, no shared
memory. Anything else (every error case included) is handed to the unchanged ASGI path with its
head and body, so statuses and messages keep one definition (``rest.py``).

Requests kept in one event-loop pass for the same model version, item shapes and requested
outputs run as ONE ``InferenceRequest`` of the model's dynamic batcher (``batch_size`` = their
items, ``group_arrivals_ns``: statistics count each request, as on the native gRPC fast path);
outputs are split per request and each response is encoded by ``rest_codec.encode_response`` and
written with the head uvicorn and Starlette would write (default headers, ``content-length``,
``content-type``, ``inference-header-content-length``, ``connection: close`` when not kept alive).
A group whose model version was unloaded or replaced, or that hit ``ModelNotReady``/``QueueFull``,
goes to the ASGI path request by request. Registration is lazy, as on the gRPC fast path: a path
is registered after the ASGI path served it once, when ``native_fast.ineligible`` has no objection.

Differences a client cannot see in a response: a lane request whose client disconnects while it
waits is not taken out of its group (it runs, and is counted, as a gRPC fast-path request is).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

import numpy as np
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from shipyard.serving_runtime.errors import BackendError, InvalidArgument, ModelNotReady, QueueFull, ServingError
from shipyard.serving_runtime.protocol.http_limits import HttpLimits
from shipyard.serving_runtime.protocol.rest_codec import encode_response, json_dumps, json_loads
from shipyard.serving_runtime.protocol.service import InferenceService
from shipyard.serving_runtime.protocol.tensors import decode_values
from shipyard.serving_runtime.protocol.types import DecodedRequest, EncodedOutput, ModelLike, RequestedOutput
from shipyard.serving_runtime.protocol.validate import collect_outputs, rules_for
from shipyard.serving_runtime.scheduling.api import InferenceRequest

log = logging.getLogger(__name__)

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_TOP_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_TENSOR_KEYS = frozenset({"name", "datatype", "shape", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_REFUSED_HEADERS = frozenset({b"transfer-encoding", b"content-encoding", b"expect"})
_CT_BINARY = b"content-type: application/octet-stream\r\n"
_CT_JSON = b"content-type: application/json\r\n"
_INLINE_WRITE = 64 * 1024  # smaller responses are written with their head in one call


class _NoEvent:
    """uvicorn sets ``cycle.message_event`` on disconnect; the lane has nothing waiting on it."""

    @staticmethod
    def set() -> None:
        return None


class _Route:
    """A registered infer path and the model version it served when registered."""

    __slots__ = ("alone", "inputs", "mbs", "model", "name", "order", "outputs", "plans", "url", "variable", "version")

    def __init__(self, url: bytes, name: str, version: str | None, model: ModelLike) -> None:
        rules = rules_for(model)
        self.url, self.name, self.version = url, name, version
        self.model = weakref.ref(model)
        # name -> (datatype, dtype, item dims, item element count or 0 when a dim is -1)
        self.inputs = {n: (f.datatype, f.dtype, f.dims, f.item_count) for n, f in rules.fast_inputs.items()}
        self.order = tuple(rules.inputs)
        self.outputs = frozenset(rules.outputs)
        self.mbs = int(model.max_batch_size)
        self.alone = not model.config.HasField("dynamic_batching")  # the default scheduler: one request a run
        self.variable = any(f.item_count == 0 for f in rules.fast_inputs.values())
        self.plans: dict[bytes, _Plan] = {}  # JSON header -> what it was parsed to (binary tensors only)


class _Plan:
    """What a JSON header with binary tensors only parsed to: a request with the same header bytes
    and body length is the same request but for its tensor bytes, so it is not parsed again."""

    __slots__ = ("items", "key", "length", "request", "tensors")

    def __init__(self, length: int, items: int, request: DecodedRequest, key: tuple[Any, ...]) -> None:
        self.length, self.items, self.request, self.key = length, items, request, key
        self.tensors: list[tuple[str, np.dtype, int, int, tuple[int, ...]]] = []  # name, dtype, count, offset, shape


class Pending:
    """One request the lane took; also the connection's ``cycle`` while it is answered (the
    attributes uvicorn and ``http_limits`` read of a cycle)."""

    __slots__ = (
        "arrival",
        "chunks",
        "disconnected",
        "handed",
        "header_length",
        "inputs",
        "items",
        "keep_alive",
        "key",
        "more_body",
        "protocol",
        "request",
        "response_complete",
        "route",
        "scope",
        "url",
    )  # fmt: skip
    message_event = _NoEvent()

    def __init__(self, protocol: Any, route: _Route, url: bytes, keep_alive: bool, header_length: int | None) -> None:
        self.protocol, self.route, self.url = protocol, route, url
        self.scope = protocol.scope
        self.keep_alive = keep_alive
        self.header_length = header_length
        self.chunks: list[bytes] = []
        self.more_body = True
        self.response_complete = self.disconnected = self.handed = False
        self.arrival = 0
        self.inputs: dict[str, np.ndarray] = {}
        self.items = 0
        self.request: DecodedRequest | None = None
        self.key: tuple[Any, ...] = ()


class RestLane:
    """Routes, parses, groups and answers lane requests (one per server)."""

    def __init__(self, service: InferenceService, limits: HttpLimits) -> None:
        self._service = service
        self._limits = limits
        self.routes: dict[bytes, _Route] = {}
        self._refused: dict[bytes, weakref.ReferenceType[Any]] = {}
        self._waiting: dict[tuple[Any, ...], list[Pending]] = {}
        self._flush_soon = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- registration ----------------------------------------------------------------------------

    def observe(self, name: str, version: str | None) -> None:
        """The ASGI path served an inference of (``name``, ``version``): register its path when its
        model can take the lane. Never raises."""
        if not name or not _SAFE.issuperset(name) or (version is not None and not _SAFE.issuperset(version)):
            return
        path = f"/v2/models/{name}/infer" if version is None else f"/v2/models/{name}/versions/{version}/infer"
        url = path.encode("ascii")
        if url in self.routes:
            return
        try:
            model = self._service.model(name, version)
        except ServingError:
            return
        refused = self._refused.get(url)
        if refused is not None and refused() is model:
            return
        from shipyard.serving_runtime.protocol.native_fast import ineligible

        reason = ineligible(model, version or "") or _lane_reason(model)
        if reason is not None:
            log.debug("model %r: REST requests take the ASGI path: %s", name, reason)
            try:
                self._refused[url] = weakref.ref(model)
            except TypeError:
                pass
            return
        self.routes[url] = _Route(url, name, version, model)
        log.info("model %r version %s: REST inference takes the fast lane", name, version or "(default)")

    def _served(self, route: _Route) -> ModelLike | None:
        """The route's model while it still serves its name and version, else None (unregistered)."""
        model = route.model()
        if model is not None:
            try:
                if self._service.model(route.name, route.version) is model:
                    return model
            except ServingError:
                pass
        if self.routes.get(route.url) is route:
            del self.routes[route.url]
        return None

    # -- taking a request --------------------------------------------------------------------------

    def take(self, protocol: Any) -> Pending | None:
        """A Pending for the head ``protocol`` just parsed when the lane may take it, else None."""
        route = self.routes.get(protocol.url)
        if route is None or protocol.expect_100_continue:
            return None
        parser = protocol.parser
        if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None
        length = header_length = None
        for name, value in protocol.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"inference-header-content-length":
                if header_length is not None or not value.isdigit():
                    return None
                header_length = int(value)
            elif name in _REFUSED_HEADERS:
                return None
        if length is None or length > self._limits.max_body_bytes:
            return None
        if header_length is not None and header_length > length:
            return None
        return Pending(protocol, route, protocol.url, parser.should_keep_alive(), header_length)

    def complete(self, pending: Pending) -> bool:
        """The body is complete: parse and queue it (True), or False to hand it to the ASGI path."""
        chunks = pending.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        pending.chunks = [body]
        if not _parse(pending, body):
            return False
        pending.arrival = time.monotonic_ns()
        waiting = self._waiting.get(pending.key)
        if waiting is None:
            self._waiting[pending.key] = [pending]
        else:
            waiting.append(pending)
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    # -- running groups ----------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_soon = False
        waiting, self._waiting = self._waiting, {}
        loop = asyncio.get_running_loop()
        for items in waiting.values():
            route = items[0].route
            group: list[Pending] = []
            size = 0
            for item in items:
                if group and (route.alone or size + item.items > route.mbs):
                    self._start(loop, group)
                    group, size = [], 0
                group.append(item)
                size += item.items
            self._start(loop, group)

    def _start(self, loop: asyncio.AbstractEventLoop, group: list[Pending]) -> None:
        task = loop.create_task(self._run(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[Pending]) -> None:
        first = group[0]
        route = first.route
        model = self._served(route)
        if model is None:
            _hand_all(group)
            return
        if len(group) == 1:
            inputs = first.inputs
        else:
            inputs = {name: np.concatenate([item.inputs[name] for item in group]) for name in route.order}
        request = InferenceRequest(
            inputs=inputs,
            outputs=first.key[1],
            batch_size=sum(item.items for item in group),
            group_arrivals_ns=[item.arrival for item in group],
        )
        try:
            results = await model.infer(request)
            outputs = collect_outputs(model, request, results)
            _check_batched(model, outputs, len(group), request.batch_size)
        except (ModelNotReady, QueueFull):
            _hand_all(group)  # as on the gRPC fast path: the ASGI path retries or answers each one
        except ServingError as exc:
            _fail_all(group, exc.http_status, exc.message)
        except asyncio.CancelledError:
            for item in group:
                item.protocol.transport.close()
            raise
        except Exception as exc:
            log.exception("unexpected error serving a REST inference")
            _fail_all(group, 500, f"internal error: {type(exc).__name__}: {exc}")
        else:
            _answer_all(model, group, outputs, getattr(results, "parameters", None))

    def cancel(self) -> None:
        """Stop the groups in progress (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()


_MAX_PLANS = 64  # per route; beyond it the cache starts over (headers that differ per request)


def _lane_reason(model: ModelLike) -> str | None:
    """What rules out the lane beyond ``native_fast.ineligible`` (which the gRPC fast path widens
    with its own per-request handling): the lane runs plain groups on the dynamic batcher only."""
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    if type(getattr(model, "scheduler", None)) is not DynamicBatcher:
        return "its scheduler is not the dynamic batcher"
    if getattr(model, "backend", "") == "python":
        return "a Python model sees each request and may answer with its own parameters"
    return None


def _parse(pending: Pending, body: bytes) -> bool:
    """Fill ``pending`` from ``body`` when the ASGI path would serve it exactly so; else False."""
    header_length = pending.header_length
    if header_length is None:
        return _parse_header(pending, body, None)
    header = body[:header_length]
    plan = pending.route.plans.get(header)
    if plan is None:
        return _parse_header(pending, body, header)
    if plan.length != len(body):
        return False  # binary sizes are fixed by the header: the ASGI path refuses this body
    inputs = pending.inputs
    for name, dtype, count, offset, shape in plan.tensors:
        inputs[name] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
    pending.items, pending.request, pending.key = plan.items, plan.request, plan.key
    return True


def _parse_header(pending: Pending, body: bytes, header: bytes | None) -> bool:
    """``_parse`` without a plan; records one for ``header`` when every tensor is binary."""
    route = pending.route
    header_length = pending.header_length
    try:
        obj = json_loads(body if header is None else header)
    except ValueError:
        return False
    if type(obj) is not dict or not _TOP_KEYS.issuperset(obj):
        return False
    tensors = obj.get("inputs")
    params = obj.get("parameters")
    request_id = obj.get("id")
    if type(tensors) is not list or len(tensors) != len(route.order):
        return False
    if params and (type(params) is not dict or len(params) != 1 or type(params.get("binary_data_output")) is not bool):
        return False
    if request_id is not None and type(request_id) is not str:
        return False
    requested = _requested(obj.get("outputs"), route)
    if requested is None:
        return False
    offset = len(body) if header_length is None else header_length
    inputs = pending.inputs
    batch = 0
    shapes: list[tuple[int, ...]] = []
    plan: list[tuple[str, np.dtype, int, int, tuple[int, ...]]] | None = [] if header is not None else None
    for tensor in tensors:
        if type(tensor) is not dict or not _TENSOR_KEYS.issuperset(tensor):
            return False
        name = tensor.get("name")
        if type(name) is not str:
            return False
        spec = route.inputs.get(name)
        if spec is None or name in inputs or tensor.get("datatype") != spec[0]:
            return False
        shape = tensor.get("shape")
        dims = spec[2]
        if type(shape) is not list or len(shape) != len(dims) + 1:
            return False
        size = shape[0]
        if type(size) is not int or not 1 <= size <= route.mbs or (batch and size != batch):
            return False
        for got, want in zip(shape[1:], dims, strict=True):
            if type(got) is not int or got < 0 or (want != -1 and got != want):
                return False
        batch = size
        tensor_params = tensor.get("parameters")
        if tensor_params:
            nbytes = tensor_params.get("binary_data_size") if type(tensor_params) is dict else None
            if type(nbytes) is not int or len(tensor_params) != 1 or header_length is None:
                return False
            count = 1
            for dim in shape:
                count *= dim
            if nbytes != count * spec[1].itemsize or offset + nbytes > len(body):
                return False
            array = np.frombuffer(body, dtype=spec[1], count=count, offset=offset).reshape(shape)
            if plan is not None:
                plan.append((name, spec[1], count, offset, tuple(shape)))
            offset += nbytes
        elif "data" in tensor:
            plan = None
            try:
                array = decode_values(name, spec[0], tuple(shape), tensor["data"])
            except InvalidArgument:
                return False
        else:
            return False
        inputs[name] = array
        if route.variable:
            shapes.append(tuple(shape[1:]))
    if offset != len(body):
        return False
    pending.items = batch
    pending.request = DecodedRequest([], requested[1], request_id, params or {})
    pending.key = (route, requested[0], tuple(shapes))
    if plan is not None and header is not None:
        if len(route.plans) >= _MAX_PLANS:
            route.plans.clear()
        recorded = route.plans[header] = _Plan(len(body), batch, pending.request, pending.key)
        recorded.tensors = plan
    return True


def _requested(outputs: Any, route: _Route) -> tuple[tuple[str, ...], list[RequestedOutput]] | None:
    """(names in order, RequestedOutput list) of a request's ``outputs``, or None to hand it back."""
    if outputs is None:
        return (), []
    if type(outputs) is not list:
        return None
    names: list[str] = []
    requested: list[RequestedOutput] = []
    for out in outputs:
        if type(out) is not dict or not _OUTPUT_KEYS.issuperset(out):
            return None
        name = out.get("name")
        if type(name) is not str or name not in route.outputs or name in names:
            return None
        params = out.get("parameters")
        binary = None
        if params:
            if type(params) is not dict or len(params) != 1 or type(params.get("binary_data")) is not bool:
                return None
            binary = params["binary_data"]
        names.append(name)
        requested.append(RequestedOutput(name, binary))
    return tuple(names), requested


def _check_batched(model: ModelLike, outputs: list[EncodedOutput], requests: int, items: int) -> None:
    """A group's outputs must carry the batch first, to be split (as on the gRPC fast path)."""
    if requests == 1:
        return
    for out in outputs:
        if not out.shape or out.shape[0] != items:
            raise BackendError(
                f"output {out.name!r} has shape {list(out.shape)} but the batch has {items} items; "
                "a batched model must return the batch as the first dimension of every output"
            )


def _answer_all(model: ModelLike, group: list[Pending], outputs: list[EncodedOutput], parameters: Any) -> None:
    name, version = model.name, str(model.version)
    start = 0
    for item in group:
        if len(group) == 1:
            mine = outputs
        else:
            stop = start + item.items
            mine = [EncodedOutput(o.name, o.datatype, (item.items, *o.shape[1:]), o.data[start:stop]) for o in outputs]
            start = stop
        assert item.request is not None
        try:
            content, json_length = encode_response(name, version, item.request, mine, parameters)
        except Exception as exc:  # as rest.py's guard would answer it
            log.exception("unexpected error encoding a REST inference response")
            _respond(item, 500, _CT_JSON, json_dumps({"error": f"internal error: {type(exc).__name__}: {exc}"}), None)
            continue
        _respond(item, 200, _CT_JSON if json_length is None else _CT_BINARY, content, json_length)


def _fail_all(group: list[Pending], status: int, message: str) -> None:
    body = json_dumps({"error": message})
    for item in group:
        _respond(item, status, _CT_JSON, body, None)


def _respond(item: Pending, status: int, content_type: bytes, content: bytes, json_length: int | None) -> None:
    """Write one response as uvicorn writes Starlette's ``Response`` (same head, same order)."""
    protocol = item.protocol
    transport = protocol.transport
    item.response_complete = True
    if item.disconnected or transport.is_closing():
        return
    parts = [_status_and_defaults(status, protocol.server_state.default_headers)]
    if json_length is not None:
        parts.append(b"inference-header-content-length: %d\r\n" % json_length)
    parts += [b"content-length: %d\r\n" % len(content), content_type]
    if not item.keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if len(content) <= _INLINE_WRITE:
        parts.append(content)
        transport.write(b"".join(parts))
    else:
        transport.write(b"".join(parts))
        transport.write(content)
    if not item.keep_alive:
        transport.close()
    protocol.on_response_complete()


_HEADS: dict[int, tuple[Any, bytes]] = {}  # status -> (uvicorn's default headers list, status line + them)


def _status_and_defaults(status: int, defaults: list[tuple[bytes, bytes]]) -> bytes:
    """The status line and uvicorn's default headers (``date``, ``server``), rebuilt when uvicorn
    replaces its list (once a second, for the date)."""
    cached = _HEADS.get(status)
    if cached is not None and cached[0] is defaults:
        return cached[1]
    head = STATUS_LINE[status] + b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
    _HEADS[status] = (defaults, head)
    return head


def _hand_all(group: list[Pending]) -> None:
    for item in group:
        item.protocol.lane_handoff(item, more_body=False)


def protocol_class(base: type[HttpToolsProtocol], lane: RestLane | None) -> type[HttpToolsProtocol]:
    """``base`` (``http_limits.protocol_class(...)``) with the lane in front of the ASGI app."""
    if lane is None:
        return base
    guarded: Any = base
    the_lane: RestLane = lane

    class LaneProtocol(guarded):  # type: ignore[misc,valid-type]
        cycle: Any  # uvicorn's RequestResponseCycle, or the lane's Pending
        body_stalled: Any

        def on_headers_complete(self) -> None:
            cycle: Any = self.cycle
            pending = None
            if not self._refused and (cycle is None or cycle.response_complete):
                pending = the_lane.take(self)
            if pending is None:
                super().on_headers_complete()
                return
            self._head_since = None  # http_limits' stamps, as its on_headers_complete sets them
            self._head_bytes = 0
            self._body_since = self.loop.time()
            self.cycle = pending
            self.body_stalled = lambda: self.lane_handoff(pending, more_body=True)

        def on_body(self, body: bytes) -> None:
            cycle: Any = self.cycle
            if type(cycle) is Pending and cycle.more_body:
                self._body_since = self.loop.time()
                cycle.chunks.append(body)
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            cycle: Any = self.cycle
            if type(cycle) is Pending and cycle.more_body:
                cycle.more_body = False
                self.body_stalled = None
                if not the_lane.complete(cycle):
                    self.lane_handoff(cycle, more_body=False)
                return
            super().on_message_complete()

        def lane_handoff(self, pending: Pending, more_body: bool) -> None:
            """Serve ``pending`` on the ASGI path: a cycle with its head and the body read so far."""
            if pending.handed:
                return
            pending.handed = pending.response_complete = True
            if pending.disconnected or self.transport.is_closing():
                return
            scope = pending.scope
            url = pending.url
            scope["method"] = "POST"
            scope["path"] = self.root_path + url.decode("ascii")
            scope["raw_path"] = self.root_path.encode("ascii") + url
            scope["query_string"] = b""
            cycle = RequestResponseCycle(
                scope=scope,
                transport=self.transport,
                flow=self.flow,
                logger=self.logger,
                access_logger=self.access_logger,
                access_log=self.access_log,
                default_headers=self.server_state.default_headers,
                message_event=asyncio.Event(),
                expect_100_continue=False,
                keep_alive=pending.keep_alive,
                on_response=self.on_response_complete,
            )
            cycle.body = bytearray(b"".join(pending.chunks))
            cycle.more_body = more_body
            cycle.message_event.set()
            if self.cycle is pending:
                self.cycle = cycle
            self._start_asgi_task(cycle, self.app)

    return LaneProtocol
