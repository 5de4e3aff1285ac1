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

A client that disconnects while its request waits leaves it as on the ASGI path: before its group
is queued the request is dropped; while the group is queued it leaves the group (``fast_leave``:
never run, counted CANCELED); once the group executes it runs and is counted by its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from shipyard.serving_runtime.errors import ModelNotReady, QueueFull, ServingError
from shipyard.serving_runtime.protocol.fast_leave import Leaving
from shipyard.serving_runtime.protocol.http_limits import HttpLimits
from shipyard.serving_runtime.protocol.rest_fast_codec import (
    Pending,
    Route,
    answer_all,
    check_batched,
    fail_all,
    group_inputs,
    parse,
)
from shipyard.serving_runtime.protocol.rest_fast_head import Heads
from shipyard.serving_runtime.protocol.service import InferenceService
from shipyard.serving_runtime.protocol.types import ModelLike
from shipyard.serving_runtime.protocol.validate import collect_outputs
from shipyard.serving_runtime.scheduling.api import InferenceRequest

log = logging.getLogger(__name__)

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_REFUSED_HEADERS = frozenset({b"transfer-encoding", b"content-encoding", b"expect"})


class RestLane:
    """Routes, parses, groups and answers lane requests (one per server)."""

    def __init__(self, service: InferenceService, limits: HttpLimits) -> None:
        self._service = service
        self._limits = limits
        self.routes: dict[bytes, Route] = {}
        self._refused: dict[bytes, weakref.ReferenceType[Any]] = {}
        self._waiting: dict[tuple[Any, ...], list[Pending]] = {}
        self._flush_soon = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._groups: set[Leaving] = set()  # the groups in progress (fast_leave.py)
        self.heads = Heads()  # heads taken before, by their bytes (rest_fast_head.py)

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
        self.routes[url] = Route(url, name, version, model)
        log.info("model %r version %s: REST inference takes the fast lane", name, version or "(default)")

    def _served(self, route: Route) -> ModelLike | None:
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
        if not parse(pending, body):
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
        if any(item.disconnected for item in group):  # gone before its group was queued: never runs
            group = [item for item in group if not item.disconnected]
            if not group:
                return
            first = group[0]
        request = InferenceRequest(
            inputs=group_inputs(route.order, group),
            outputs=first.key[1],
            batch_size=sum(item.items for item in group),
            group_arrivals_ns=[item.arrival for item in group],
        )
        leaving = Leaving(request, group, _pending_rows)
        self._groups.add(leaving)
        live = group
        try:
            results = await model.infer(request)
            if leaving.gone is not None:
                live = [item for item, left in zip(group, leaving.gone, strict=True) if not left]
            outputs = collect_outputs(model, request, results)
            check_batched(model, outputs, len(live), request.batch_size)
        except (ModelNotReady, QueueFull):
            _hand_all(group)  # as on the gRPC fast path: the ASGI path retries or answers each one
        except ServingError as exc:
            fail_all(group, exc.http_status, exc.message)
        except asyncio.CancelledError:
            for item in group:
                item.protocol.transport.close()
            raise
        except Exception as exc:
            log.exception("unexpected error serving a REST inference")
            fail_all(group, 500, f"internal error: {type(exc).__name__}: {exc}")
        else:
            answer_all(model, live, outputs, getattr(results, "parameters", None))
        finally:
            self._groups.discard(leaving)

    def left(self, pending: Pending) -> None:
        """``pending``'s client closed its connection: it leaves its group while that is queued."""
        for leaving in self._groups:
            group: list[Pending] = leaving.owner
            if pending in group:
                leaving.leave(group.index(pending))
                return

    def cancel(self) -> None:
        """Stop the groups in progress (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()


def _lane_reason(model: ModelLike) -> str | None:
    """What rules out the lane beyond ``native_fast.ineligible`` (which the gRPC fast path widens
    with its own per-request handling): the lane runs plain groups on the dynamic batcher only."""
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    if type(getattr(model, "scheduler", None)) is not DynamicBatcher:
        return "its scheduler is not the dynamic batcher"
    if getattr(model, "backend", "") == "python":
        return "a Python model sees each request and may answer with its own parameters"
    return None


def _pending_rows(group: list[Pending]) -> list[int]:
    return [item.items for item in group]


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
        _open = 0  # messages httptools began and did not complete: 0 between messages
        _begun = 0  # messages httptools began on this connection
        _took: Pending | None = None  # the first request the lane took from the read being parsed

        def data_received(self, data: bytes) -> None:
            if self._open:
                super().data_received(data)
                return
            pending = the_lane.heads.match(self, the_lane.routes, data)  # a head taken before (rest_fast_head.py)
            if pending is not None:
                self.cycle = pending
                self.body_stalled = None
                if not the_lane.complete(pending):
                    self.lane_handoff(pending, more_body=False)
                return
            begun = self._begun
            self._took = None
            super().data_received(data)
            took, self._took = self._took, None
            if took is not None and self._begun == begun + 1 and not self._open and self.cycle is took:
                the_lane.heads.learn(self, took, data)  # this read was one whole request, taken by the lane

        def on_message_begin(self) -> None:
            self._open += 1
            self._begun += 1
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            cycle: Any = self.cycle
            pending = None
            if not self._refused and (cycle is None or cycle.response_complete):
                pending = the_lane.take(self)
            if pending is None:
                super().on_headers_complete()
                return
            if self._took is None:
                self._took = pending
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
            self._open -= 1
            cycle: Any = self.cycle
            if type(cycle) is Pending and cycle.more_body:
                cycle.more_body = False
                self.body_stalled = None
                if not the_lane.complete(cycle):
                    self.lane_handoff(cycle, more_body=False)
                return
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            cycle: Any = self.cycle
            super().connection_lost(exc)
            if type(cycle) is Pending and cycle.disconnected and cycle.arrival:
                the_lane.left(cycle)

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
