"""The overload limits: ``--grpc-max-concurrent-rpcs``, ``--grpc-max-pending-rpcs``,
``--grpc-max-streams-per-connection`` and ``--http-max-concurrency`` reach the servers, with sane
defaults; excess gRPC calls get RESOURCE_EXHAUSTED at once, and one greedy connection cannot take
the server from another."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import grpc
import pytest

from shipyard.serving_runtime.cli import parse_options
from shipyard.serving_runtime.protocol import grpc_service
from shipyard.serving_runtime.server import (
    DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
    DEFAULT_GRPC_MAX_PENDING_RPCS,
    DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION,
)


def test_flags_and_defaults(tmp_path: Path) -> None:
    defaults = parse_options(["--model-repository", str(tmp_path)])
    assert defaults.grpc_max_concurrent_rpcs == DEFAULT_GRPC_MAX_CONCURRENT_RPCS > 0
    assert defaults.grpc_max_pending_rpcs == DEFAULT_GRPC_MAX_PENDING_RPCS > 0
    assert defaults.grpc_max_streams_per_connection == DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION > 0
    assert defaults.http_max_concurrency == 0
    options = parse_options(
        [
            "--model-repository",
            str(tmp_path),
            "--grpc-max-concurrent-rpcs",
            "0",
            "--grpc-max-pending-rpcs",
            "64",
            "--grpc-max-streams-per-connection",
            "0",
            "--http-max-concurrency",
            "100",
        ]
    )
    assert (
        options.grpc_max_concurrent_rpcs,
        options.grpc_max_pending_rpcs,
        options.grpc_max_streams_per_connection,
        options.http_max_concurrency,
    ) == (0, 64, 0, 100)
    with pytest.raises(SystemExit):
        parse_options(["--model-repository", str(tmp_path), "--grpc-max-concurrent-rpcs", "-1"])


def test_pending_limit_options() -> None:
    assert dict(grpc_service.server_options(64))["grpc.server.max_pending_requests"] == 64
    assert dict(grpc_service.server_options(64))["grpc.server.max_pending_requests_hard_limit"] == 128
    assert "grpc.server.max_pending_requests" not in dict(grpc_service.server_options(0))


def test_stream_limit_options() -> None:
    assert dict(grpc_service.server_options(64, 32))["grpc.max_concurrent_streams"] == 32
    assert "grpc.max_concurrent_streams" not in dict(grpc_service.server_options(64, 0))


async def test_a_greedy_connection_waits_for_streams_while_another_connection_is_served() -> None:
    """With 3 streams per connection, 10 calls on one channel reach the server 3 at a time (the rest
    wait in that client, not in the server), and a call on a second channel gets in meanwhile."""
    release = asyncio.Event()
    inside = collections.Counter()

    async def handler(request: bytes, context: object) -> bytes:
        inside[request] += 1
        try:
            if request == b"greedy":
                await release.wait()
            return request
        finally:
            inside[request] -= 1

    server = grpc.aio.server(options=grpc_service.server_options(64, 3), maximum_concurrent_rpcs=100)
    generic = grpc.method_handlers_generic_handler("t.T", {"M": grpc.unary_unary_rpc_method_handler(handler)})
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as greedy,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.channel_id", 2)]) as light,
        ):
            call = greedy.unary_unary("/t.T/M")
            greedy_calls = [asyncio.ensure_future(call(b"greedy", timeout=20)) for _ in range(10)]
            for _ in range(200):
                if inside[b"greedy"] == 3:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # had the limit not held, the other 7 would be in by now
            assert inside[b"greedy"] == 3
            assert await light.unary_unary("/t.T/M")(b"light", timeout=5) == b"light"
            release.set()
            assert await asyncio.gather(*greedy_calls) == [b"greedy"] * 10
    finally:
        await server.stop(None)


async def test_calls_past_the_concurrent_limit_get_resource_exhausted_at_once() -> None:
    """What the runtime relies on from grpc.aio's ``maximum_concurrent_rpcs``."""
    release = asyncio.Event()

    async def slow(request: bytes, context: object) -> bytes:
        await release.wait()
        return b"ok"

    server = grpc.aio.server(options=grpc_service.server_options(64), maximum_concurrent_rpcs=4)
    handler = grpc.method_handlers_generic_handler("t.T", {"M": grpc.unary_unary_rpc_method_handler(slow)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.T/M")
            outcomes: collections.Counter[str] = collections.Counter()

            async def one() -> None:
                try:
                    await call(b"x", timeout=20)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1

            tasks = [asyncio.create_task(one()) for _ in range(12)]
            for _ in range(200):  # the 8 excess calls are refused while the 4 admitted ones wait
                if outcomes["RESOURCE_EXHAUSTED"] == 8:
                    break
                await asyncio.sleep(0.05)
            assert outcomes == {"RESOURCE_EXHAUSTED": 8}
            release.set()
            await asyncio.gather(*tasks)
            assert outcomes == {"RESOURCE_EXHAUSTED": 8, "OK": 4}
    finally:
        await server.stop(None)
