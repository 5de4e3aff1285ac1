"""The REST fast lane's requests (``rest_fast.py``): what a taken request holds, its parse (only
what the ASGI path would serve exactly so), the parsed-header cache, and its answer, written as
uvicorn writes Starlette's ``Response``.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import numpy as np
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from shipyard.serving_runtime.errors import BackendError, InvalidArgument
from shipyard.serving_runtime.protocol.rest_codec import encode_response, json_dumps, json_loads
from shipyard.serving_runtime.protocol.tensors import decode_values
from shipyard.serving_runtime.protocol.types import DecodedRequest, EncodedOutput, ModelLike, RequestedOutput
from shipyard.serving_runtime.protocol.validate import rules_for

log = logging.getLogger(__name__)

_TOP_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_TENSOR_KEYS = frozenset({"name", "datatype", "shape", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_CT_BINARY = b"content-type: application/octet-stream\r\n"
_CT_JSON = b"content-type: application/json\r\n"
_INLINE_WRITE = 64 * 1024  # smaller responses are written with their head in one call


class _NoEvent:
    """uvicorn sets ``cycle.message_event`` on disconnect; the lane has nothing waiting on it."""

    @staticmethod
    def set() -> None:
        return None


class Route:
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
        self.plans: dict[bytes, Plan] = {}  # JSON header -> what it was parsed to (binary tensors only)


class Plan:
    """What a JSON header with binary tensors only parsed to: a request with the same header bytes
    and body length is the same request but for its tensor bytes, so it is not parsed again."""

    __slots__ = ("by_name", "items", "key", "length", "request", "tensors")

    def __init__(
        self,
        length: int,
        items: int,
        request: DecodedRequest,
        key: tuple[Any, ...],
        tensors: list[tuple[str, np.dtype, int, int, tuple[int, ...]]],  # name, dtype, count, offset, shape
    ) -> None:
        self.length, self.items, self.request, self.key, self.tensors = length, items, request, key, tensors
        # name -> (dtype, offset, byte size, shape): where a group finds each request's rows
        self.by_name = {t[0]: (t[1], t[3], t[2] * t[1].itemsize, t[4]) for t in tensors}


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
        "plan",
        "protocol",
        "request",
        "response_complete",
        "route",
        "scope",
        "url",
    )  # fmt: skip
    message_event = _NoEvent()

    def __init__(self, protocol: Any, route: Route, url: bytes, keep_alive: bool, header_length: int | None) -> None:
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
        self.plan: Plan | None = None  # parsed by a plan: its tensors are read from the body when needed (inputs)


_MAX_PLANS = 64  # per route; beyond it the cache starts over (headers that differ per request)


def parse(pending: Pending, body: bytes) -> bool:
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
    pending.items, pending.request, pending.key, pending.plan = plan.items, plan.request, plan.key, plan
    return True


def inputs(pending: Pending) -> dict[str, np.ndarray]:
    """``pending``'s input arrays (views of its body)."""
    plan = pending.plan
    if plan is not None and not pending.inputs:
        body = pending.chunks[0]
        for name, dtype, count, offset, shape in plan.tensors:
            pending.inputs[name] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
    return pending.inputs


def group_inputs(order: tuple[str, ...], group: list[Pending]) -> dict[str, np.ndarray]:
    """A group's inputs (the keys of ``order``): each one array of its requests' rows, in order.
    Requests parsed by a plan have their rows' bytes joined, without an array per request."""
    if len(group) == 1:
        return inputs(group[0])
    if any(item.plan is None for item in group):
        return {name: np.concatenate([inputs(item)[name] for item in group]) for name in order}
    total = sum(item.items for item in group)
    joined: dict[str, np.ndarray] = {}
    for name in order:
        parts = []
        for item in group:
            _, offset, size, _ = item.plan.by_name[name]  # type: ignore[union-attr]
            parts.append(item.chunks[0][offset : offset + size])
        dtype, _, _, shape = group[0].plan.by_name[name]  # type: ignore[union-attr]
        joined[name] = np.frombuffer(b"".join(parts), dtype=dtype).reshape((total, *shape[1:]))
    return joined


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
        route.plans[header] = Plan(len(body), batch, pending.request, pending.key, plan)
    return True


def _requested(outputs: Any, route: Route) -> tuple[tuple[str, ...], list[RequestedOutput]] | None:
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


def check_batched(model: ModelLike, outputs: list[EncodedOutput], requests: int, items: int) -> None:
    """A group's outputs must carry the batch first, to be split (as on the gRPC fast path)."""
    if requests == 1:
        return
    for out in outputs:
        if not out.shape or out.shape[0] != items:
            raise BackendError(
                f"output {out.name!r} has shape {list(out.shape)} but the batch has {items} items; "
                "a batched model must return the batch as the first dimension of every output"
            )


def answer_all(model: ModelLike, group: list[Pending], outputs: list[EncodedOutput], parameters: Any) -> None:
    """Split ``outputs`` per request of ``group`` and answer each (``encode_response``'s bytes).

    When every output of a response is binary, its JSON header is the same for every request of
    the group with the same parsed request (a plan's, ``parse``) and the same item count: the first
    such response is encoded in full, the others reuse its header with their own rows' bytes."""
    name, version = model.name, str(model.version)
    if len(group) == 1:
        _answer(group[0], name, version, outputs, parameters)
        return
    total = sum(item.items for item in group)
    raws: list[Any] = [np.ascontiguousarray(o.data).reshape(-1).view(np.uint8).data for o in outputs]
    row_bytes = [len(raw) // total if total else 0 for raw in raws]
    headers: dict[tuple[int, int], bytes | None] = {}  # (id of the parsed request, items) -> its JSON header
    start = 0
    for item in group:
        stop = start + item.items
        key = (id(item.request), item.items)
        header = headers.get(key)
        if header is None:
            mine = [EncodedOutput(o.name, o.datatype, (item.items, *o.shape[1:]), o.data[start:stop]) for o in outputs]
            content = _answer(item, name, version, mine, parameters)
            if key not in headers:
                headers[key] = _binary_header(content, mine)
        else:
            parts: list[Any] = [header]
            parts += [raw[start * size : stop * size] for raw, size in zip(raws, row_bytes, strict=True)]
            _respond(item, 200, _CT_BINARY, b"".join(parts), len(header))
        start = stop


def _answer(
    item: Pending, name: str, version: str, mine: list[EncodedOutput], parameters: Any
) -> tuple[bytes, int | None] | None:
    """Encode and write one response; its (content, JSON header length), None when encoding failed."""
    assert item.request is not None
    try:
        content, json_length = encode_response(name, version, item.request, mine, parameters)
    except Exception as exc:  # as rest.py's guard would answer it
        log.exception("unexpected error encoding a REST inference response")
        _respond(item, 500, _CT_JSON, json_dumps({"error": f"internal error: {type(exc).__name__}: {exc}"}), None)
        return None
    _respond(item, 200, _CT_JSON if json_length is None else _CT_BINARY, content, json_length)
    return content, json_length


def _binary_header(encoded: tuple[bytes, int | None] | None, mine: list[EncodedOutput]) -> bytes | None:
    """The JSON header of a response whose outputs are all binary (its bytes after the header are
    exactly every output's raw bytes), else None."""
    if encoded is None:
        return None
    content, json_length = encoded
    if json_length is None or len(content) - json_length != sum(o.data.nbytes for o in mine):
        return None
    if any(o.shm is not None or o.datatype == "BYTES" for o in mine):
        return None
    return content[:json_length]


def fail_all(group: list[Pending], status: int, message: str) -> None:
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
