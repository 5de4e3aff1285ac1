"""The REST fast lane's head cache (``rest_fast.py``): a request whose head bytes the lane took before
is taken again without httptools and uvicorn's per-header callbacks.

A client sends the same request head again and again (tritonclient, the benchmark's client, any
client with fixed shapes: the same request line, the same headers, the same ``Content-Length``).
The first time, the head goes through httptools and uvicorn's callbacks as always, and when the
lane takes it (``RestLane.take``) and the whole request came in one read, the lane keeps what the
head parsed to (``Head``: route, body length, header length, keep-alive, uvicorn's header list),
keyed by the head's bytes. Every decision ``take`` makes is a function of those bytes and of state
the fast path checks again each time (the route still registered, the connection between requests
and not refused), so a later read on an idle connection that is exactly a known head plus a body of
its length is taken at once: the connection's state is set as httptools' callbacks would have set
it (uvicorn's ``scope`` and header list, ``http_limits``' stamps), and the request goes on as any
lane request (``RestLane.complete``: the body is parsed and checked as always; on any doubt the
ASGI path answers it). httptools never sees those bytes, which is right only while it sits between
two messages: the protocol counts the messages it began and completed and uses the cache only then.
Anything else (a read with more or less than one request, a head seen for the first time) takes the
usual path.
"""

from __future__ import annotations

from typing import Any

from shipyard.serving_runtime.protocol.http_limits import CONNECTION, DISCONNECT_HOOKS
from shipyard.serving_runtime.protocol.rest_fast_codec import Pending, Route

_MAX_HEADS = 256  # per server; beyond it the cache starts over (clients whose heads differ per request)
_HEAD_END = b"\r\n\r\n"


class Head:
    """What one head's bytes parsed to, as the lane took it."""

    __slots__ = ("header_length", "headers", "keep_alive", "length", "route", "url")

    def __init__(self, pending: Pending, length: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.route: Route = pending.route
        self.url = pending.url
        self.keep_alive = pending.keep_alive
        self.header_length = pending.header_length
        self.length = length
        self.headers = tuple(headers)


class Heads:
    """The lane's heads, by their bytes (including the blank line that ends them)."""

    def __init__(self) -> None:
        self.known: dict[bytes, Head] = {}

    def learn(self, protocol: Any, pending: Pending, data: bytes) -> None:
        """``data`` (one read) was exactly one request, which the lane took as ``pending``: keep its head."""
        end = data.find(_HEAD_END)
        if end < 0:
            return
        end += len(_HEAD_END)
        body = sum(len(chunk) for chunk in pending.chunks)
        if end + body != len(data):
            return
        if len(self.known) >= _MAX_HEADS:
            self.known.clear()
        self.known[data[:end]] = Head(pending, body, protocol.headers)

    def match(self, protocol: Any, routes: dict[bytes, Route], data: bytes) -> Pending | None:
        """The Pending for ``data`` when it is a known head and a complete body on an idle
        connection (the connection's state set as httptools' callbacks would), else None."""
        end = data.find(_HEAD_END)
        if end < 0:
            return None
        end += len(_HEAD_END)
        head = self.known.get(data[:end])
        if head is None or len(data) - end != head.length or routes.get(head.url) is not head.route:
            return None
        cycle = protocol.cycle
        if protocol._refused or protocol.pipeline or not (cycle is None or cycle.response_complete):
            return None
        # uvicorn's data_received, on_message_begin, on_url and on_header; http_limits' stamps
        protocol._unset_keepalive_if_required()
        protocol._head_since = protocol._idle_since = None
        protocol._head_bytes = 0
        protocol.url = head.url
        protocol.expect_100_continue = False
        protocol.headers = headers = list(head.headers)
        protocol.scope = {
            "type": "http",
            "asgi": {"version": protocol.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": protocol.server,
            "client": protocol.client,
            "scheme": protocol.scheme,
            "root_path": protocol.root_path,
            "headers": headers,
            "state": protocol.app_state.copy(),
            DISCONNECT_HOOKS: [],
            CONNECTION: protocol,
        }
        pending = Pending(protocol, head.route, head.url, head.keep_alive, head.header_length)
        pending.chunks.append(data[end:])
        pending.more_body = False
        return pending
