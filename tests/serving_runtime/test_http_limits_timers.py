"""The REST limits' cost per request (protocol/http_limits.py): the head, body and keep-alive idle
timeouts are enforced by one sweep per server, not by timers per request and per body piece (which
cost REST add_sub c=1 about a fifth of its throughput). Real loopback connections to uvicorn's protocol with
our limits, in this process, counting the event loop's timers; the limits themselves (408, 431,
413, slow heads closed) are tested against a real server in test_edges.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvicorn
from starlette.requests import Request
from uvicorn.server import ServerState

from shipyard.serving_runtime.protocol import http_limits

BODY = b"x" * 200
REQUEST = (
    b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(BODY)
) + BODY


async def _serve(limits: http_limits.HttpLimits) -> tuple[asyncio.AbstractServer, int]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body = await http_limits.read_body(Request(scope, receive), limits)
            status, answer = 200, b"%d" % len(body)
        except http_limits.BodyTimeout as exc:
            status, answer = 408, exc.message.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"%d" % len(answer))]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer})

    config = uvicorn.Config(app, http=http_limits.protocol_class(limits), lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: config.http_protocol_class(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    return server, server.sockets[0].getsockname()[1]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return int(head.split(b" ")[1]), await reader.readexactly(length)


async def test_keep_alive_requests_arm_no_timer_of_ours() -> None:
    server, port = await _serve(http_limits.HttpLimits())
    loop = asyncio.get_running_loop()
    armed = 0
    original = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal armed
        armed += 1
        return original(when, callback, *args, **kwargs)

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(REQUEST)
        assert await _answer(reader) == (200, b"200")
        loop.call_at = counting_call_at  # type: ignore[method-assign]
        requests = 200
        for _ in range(requests):
            writer.write(REQUEST)
            assert await _answer(reader) == (200, b"200")
    finally:
        loop.call_at = original  # type: ignore[method-assign]
        writer.close()
        server.close()
    # at most a few sweeps: no timer per request or body piece (before the sweep: a head timer, three
    # body timeouts and uvicorn's keep-alive timer each, 5 per request)
    assert armed <= 5, armed


async def test_the_sweep_times_out_a_paused_body_and_closes_a_slow_head_and_an_idle_connection() -> None:
    limits = http_limits.HttpLimits(header_timeout_s=0.4, body_timeout_s=0.4, idle_timeout_s=0.6)
    server, port = await _serve(limits)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(REQUEST[: -len(BODY) + 10])  # the head and 10 of 200 body bytes, then nothing
        status, answer = await asyncio.wait_for(_answer(reader), 5)
        assert status == 408 and b"--http-body-timeout-secs" in answer
        assert 0.4 <= time.monotonic() - started < 0.4 + 1.5  # the limit, a sweep (0.1 s), a busy machine
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        assert 0.4 <= time.monotonic() - started < 0.4 + 1.5
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # a keep-alive connection stays open while it is used more often than the idle limit
            writer.write(REQUEST)
            assert await _answer(reader) == (200, b"200")
            await asyncio.sleep(0.3)
        writer.write(REQUEST)
        assert await _answer(reader) == (200, b"200")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: closed
        assert 0.6 <= time.monotonic() - started < 0.6 + 1.5
        writer.close()
    finally:
        server.close()
