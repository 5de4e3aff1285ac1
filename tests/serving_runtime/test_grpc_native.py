"""The native gRPC frontend (``protocol/native/grpc_frontend.cc``, built by ``make native``).

The C++ module is driven directly here over real gRPC connections (grpcio clients): what reaches
Python, what the C++ side refuses by itself, cancellation, streams and shutdown. The inference
protocol on top of it runs in test_protocol_endpoints.py and test_protocol_errors.py, once per
frontend, and against a real server at the end of this file.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_harness import SLOW_CONFIG, slow_onnx, start_server, write_model
from tritonclient.utils import InferenceServerException

from shipyard.serving_runtime import server as server_module
from shipyard.serving_runtime.protocol import native_grpc

REASON = native_grpc.unavailable_reason()
needs_native = pytest.mark.skipif(REASON is not None, reason=REASON or "")

UNARY, STREAM = "/t.T/M", "/t.T/S"


@dataclass
class Driver:
    """A ``Frontend`` on the running loop; ``events`` gets what it hands to Python."""

    native: Any
    port: int
    events: asyncio.Queue[tuple[int, int, int, bytes | None]] = field(default_factory=asyncio.Queue)

    async def next(self, timeout: float = 5.0) -> tuple[int, int, int, bytes | None]:
        return await asyncio.wait_for(self.events.get(), timeout)


@asynccontextmanager
async def driver(max_inflight: int = 0, max_streams: int = 0) -> AsyncIterator[Driver]:
    module = native_grpc.load_extension()
    native = module.Frontend([UNARY], [STREAM], max_inflight, max_streams, 1 << 20)
    port = native.start("127.0.0.1:0")
    d = Driver(native, port)
    loop = asyncio.get_running_loop()
    loop.add_reader(native.fileno(), lambda: [d.events.put_nowait(e) for e in native.take()])
    try:
        yield d
    finally:
        loop.remove_reader(native.fileno())
        await asyncio.to_thread(native.shutdown, 0.0)


def channel(port: int, number: int = 1) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.channel_id", number)])


@needs_native
async def test_a_unary_call_reaches_python_whole_and_gets_its_answer() -> None:
    module = native_grpc.load_extension()
    async with driver() as d, channel(d.port) as ch:
        call = asyncio.ensure_future(ch.unary_unary(UNARY)(b"hello" * 1000, timeout=5))
        call_id, kind, method, payload = await d.next()
        assert (kind, method, payload) == (module.MESSAGE, 0, b"hello" * 1000)
        d.native.send(call_id, payload[::-1])
        assert await call == (b"hello" * 1000)[::-1]
        d.native.send(call_id, b"again")  # the call has ended: nothing happens
        await asyncio.sleep(0.05)
        assert d.native.inflight == 0


@needs_native
async def test_an_error_status_reaches_the_client_with_its_message() -> None:
    async with driver() as d, channel(d.port) as ch:
        call = asyncio.ensure_future(ch.unary_unary(UNARY)(b"x", timeout=5))
        call_id, *_ = await d.next()
        d.native.send(call_id, None, True, grpc.StatusCode.NOT_FOUND.value[0], "unknown model 'nope'")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "unknown model 'nope'"


@needs_native
async def test_unknown_methods_are_refused_without_waking_python() -> None:
    async with driver() as d, channel(d.port) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/inference.GRPCInferenceService/CudaSharedMemoryStatus")(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "CudaSharedMemoryStatus is not implemented" in (err.value.details() or "")
        await asyncio.sleep(0.05)
        assert d.events.empty()


@needs_native
async def test_calls_past_the_inflight_limit_get_resource_exhausted_at_once() -> None:
    async with driver(max_inflight=4) as d, channel(d.port) as ch:
        call = ch.unary_unary(UNARY)
        outcomes: collections.Counter[str] = collections.Counter()
        messages: set[str] = set()

        async def one() -> None:
            try:
                await call(b"x", timeout=20)
                outcomes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1
                messages.add(exc.details() or "")

        tasks = [asyncio.create_task(one()) for _ in range(12)]
        admitted = [await d.next() for _ in range(4)]
        for _ in range(200):  # the 8 excess calls are refused while the 4 admitted ones wait
            if outcomes["RESOURCE_EXHAUSTED"] == 8:
                break
            await asyncio.sleep(0.02)
        assert outcomes == {"RESOURCE_EXHAUSTED": 8}
        assert d.events.empty()  # Python never saw the refused ones
        assert messages == {
            "the server has 4 gRPC calls in progress, its limit (--grpc-max-concurrent-rpcs); retry later"
        }
        for call_id, *_ in admitted:
            d.native.send(call_id, b"ok")
        await asyncio.gather(*tasks)
        assert outcomes == {"RESOURCE_EXHAUSTED": 8, "OK": 4}
        assert d.native.refused == 8


@needs_native
async def test_a_greedy_connection_waits_for_streams_while_another_connection_is_served() -> None:
    """With 3 streams per connection, 10 calls on one channel reach Python 3 at a time (the rest wait
    in that client), and a call on a second channel gets in meanwhile."""
    async with driver(max_streams=3) as d, channel(d.port, 1) as greedy, channel(d.port, 2) as light:
        calls = [asyncio.ensure_future(greedy.unary_unary(UNARY)(b"greedy", timeout=20)) for _ in range(10)]
        held = [await d.next() for _ in range(3)]
        await asyncio.sleep(0.3)  # had the limit not held, the other 7 would be here by now
        assert d.events.empty()
        light_call = asyncio.ensure_future(light.unary_unary(UNARY)(b"light", timeout=5))
        light_id, _, _, payload = await d.next()
        assert payload == b"light"
        d.native.send(light_id, b"light")
        assert await light_call == b"light"
        pending = list(held)
        answered = 0
        while answered < 10:
            call_id, *_ = pending.pop() if pending else await d.next()
            d.native.send(call_id, b"greedy")
            answered += 1
        assert await asyncio.gather(*calls) == [b"greedy"] * 10


@needs_native
async def test_a_client_deadline_is_answered_in_cpp_and_python_hears_of_it() -> None:
    module = native_grpc.load_extension()
    async with driver() as d, channel(d.port) as ch:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(UNARY)(b"x", timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2.0
        call_id, kind, _, _ = await d.next()
        assert kind == module.MESSAGE
        cancelled_id, kind, _, payload = await d.next()
        assert (cancelled_id, kind, payload) == (call_id, module.CANCEL, None)
        d.native.send(call_id, b"too late")  # a late answer is dropped
        for _ in range(100):
            if d.native.inflight == 0:
                break
            await asyncio.sleep(0.02)
        assert d.native.inflight == 0


@needs_native
async def test_a_stream_delivers_every_message_and_answers_in_order() -> None:
    module = native_grpc.load_extension()
    async with driver() as d, channel(d.port) as ch:
        stream = ch.stream_stream(STREAM)(timeout=10)
        for word in (b"a", b"b", b"c"):
            await stream.write(word)
        await stream.done_writing()
        events = [await d.next() for _ in range(4)]
        assert [(kind, method, payload) for _, kind, method, payload in events] == [
            (module.MESSAGE, 1, b"a"),
            (module.MESSAGE, 1, b"b"),
            (module.MESSAGE, 1, b"c"),
            (module.HALF_CLOSE, 1, None),
        ]
        call_id = events[0][0]
        assert {e[0] for e in events} == {call_id}
        for word in (b"A", b"B", b"C"):
            d.native.send(call_id, word, False)
        d.native.send(call_id, None, True)
        assert [m async for m in stream] == [b"A", b"B", b"C"]
        assert await stream.code() == grpc.StatusCode.OK


@needs_native
async def test_a_stream_can_end_with_an_error_after_answers() -> None:
    async with driver() as d, channel(d.port) as ch:
        stream = ch.stream_stream(STREAM)(timeout=10)
        await stream.write(b"a")
        call_id, *_ = await d.next()
        d.native.send(call_id, b"A", False)
        d.native.send(call_id, None, True, grpc.StatusCode.INVALID_ARGUMENT.value[0], "bad input 'x'")
        assert await stream.read() == b"A"
        assert await stream.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await stream.details() == "bad input 'x'"


@needs_native
async def test_shutdown_waits_for_calls_in_progress_within_the_grace_period() -> None:
    module = native_grpc.load_extension()
    native = module.Frontend([UNARY], [], 0, 0, 1 << 20)
    port = native.start("127.0.0.1:0")
    events: asyncio.Queue[tuple[int, int, int, bytes | None]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_reader(native.fileno(), lambda: [events.put_nowait(e) for e in native.take()])
    try:
        async with channel(port) as ch:
            call = asyncio.ensure_future(ch.unary_unary(UNARY)(b"x", timeout=10))
            call_id, *_ = await asyncio.wait_for(events.get(), 5)
            stopping = asyncio.ensure_future(asyncio.to_thread(native.shutdown, 5.0))
            await asyncio.sleep(0.2)
            assert not stopping.done()  # waiting for the call in progress
            native.send(call_id, b"done")
            assert await call == b"done"
            await asyncio.wait_for(stopping, 5)
    finally:
        loop.remove_reader(native.fileno())


def test_choosing_the_frontend(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert server_module.choose_grpc_frontend("aio") == "aio"
    with pytest.raises(OSError, match="unknown gRPC frontend 'fast'; choose one of auto, native, aio"):
        server_module.choose_grpc_frontend("fast")
    monkeypatch.setattr(native_grpc, "unavailable_reason", lambda: "not built; build it with `make native`")
    with pytest.raises(OSError, match="make native"):
        server_module.choose_grpc_frontend("native")
    with caplog.at_level(logging.INFO, logger="shipyard.serving_runtime"):
        assert server_module.choose_grpc_frontend("auto") == "aio"
    assert "gRPC on grpc.aio: not built" in caplog.text


X = np.random.default_rng(0).random((64, 512)).astype(np.float32)


def _slow_infer(client: Any, timeout: float) -> Any:
    tensor = grpcclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer("slow", [tensor], client_timeout=timeout)


@needs_native
@pytest.mark.slow
def test_a_request_whose_deadline_passes_in_the_queue_never_runs(tmp_path: Path) -> None:
    """Against the real server on the native frontend: B waits behind A on the only instance, its
    client gives up, and the model never runs it; the server goes on serving."""
    repo = tmp_path / "repo"
    write_model(repo, "slow", {1: slow_onnx()}, SLOW_CONFIG)
    server = start_server(tmp_path, [repo], "--grpc-frontend", "native", wait_models=("slow",))
    try:
        assert "(native frontend)" in server.log()
        client = grpcclient.InferenceServerClient(server.grpc_host)
        _slow_infer(client, 120)  # warm
        started = time.monotonic()
        _slow_infer(client, 120)
        one = time.monotonic() - started  # A's run time
        before = client.get_inference_statistics("slow").model_stats[0].inference_stats.success.count
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_slow_infer, grpcclient.InferenceServerClient(server.grpc_host), 120)
            time.sleep(one / 10)  # A is running
            with pytest.raises(InferenceServerException) as err:
                _slow_infer(client, one / 3)  # B's deadline passes while A still runs
            assert "Deadline Exceeded" in str(err.value)
            first.result(timeout=120)
        stats = client.get_inference_statistics("slow").model_stats[0]
        assert stats.inference_stats.success.count - before == 1  # only A ran
        assert _slow_infer(client, 120).as_numpy("y").shape == (64, 512)
    finally:
        assert server.stop() == 0


def _writer_threads() -> set[int]:
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == "grpc-writer":
                    found.add(int(tid))
        except OSError:
            pass
    return found


async def _affinity_after(d: Driver, calls: list[asyncio.Future[Any]], answered: list[int], writer: int) -> set[int]:
    """Answer ``answered``; once as many of ``calls`` are done, the writer thread's affinity."""
    done_before = sum(call.done() for call in calls)
    for call_id in answered:
        d.native.send(call_id, b"ok")
    for _ in range(250):
        if sum(call.done() for call in calls) == done_before + len(answered):
            break
        await asyncio.sleep(0.02)
    return os.sched_getaffinity(writer)


@needs_native
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("follow", ["1", "0"])
async def test_under_load_the_writer_runs_on_the_event_loops_cpu(follow: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more than one call in progress the writer thread is pinned to the CPU the event loop last
    took events on (answers go out when the loop yields it); with one call it may run anywhere again.
    ``SHIPYARD_GRPC_WRITER_FOLLOWS_LOOP=0`` leaves it alone."""
    monkeypatch.setenv("SHIPYARD_GRPC_WRITER_FOLLOWS_LOOP", follow)
    allowed = os.sched_getaffinity(0)
    before = _writer_threads()
    async with driver() as d, channel(d.port) as ch:
        (writer,) = _writer_threads() - before
        assert os.sched_getaffinity(writer) == allowed
        calls = [asyncio.ensure_future(ch.unary_unary(UNARY)(b"x", timeout=10)) for _ in range(5)]
        ids = [(await d.next())[0] for _ in range(5)]
        under_load = await _affinity_after(d, calls, ids[:4], writer)  # the fifth call stays in progress
        assert sum(call.done() for call in calls) == 4
        alone = await _affinity_after(d, calls, ids[4:], writer)  # the only call in progress
        assert [await call for call in calls] == [b"ok"] * 5
    if follow == "1":
        assert len(under_load) == 1 and under_load < allowed, under_load
    else:
        assert under_load == allowed
    assert alone == allowed
