"""Latency at concurrency 1 (docs/serving.md): a fast-path group is answered from its instance's
thread and an idle instance starts a group at once.

Scheduler level, with the recording fake of ``test_scheduling_dynamic``: ``answer_early`` runs on
the instance's thread; whatever the event loop runs after the answer was sent already sees the
request counted; a failed batch is not answered early; a group dispatches inside ``submit``.
Server level, real native frontend and tritonclient, with an ONNX model slow enough never to run
inline on the loop (so every request takes the instance thread): each response is correct, and
the statistics read right after each response count it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_scheduling_dynamic import FakeInstance, scheduler

from shipyard.serving_runtime.errors import BackendError
from shipyard.serving_runtime.scheduling import InferenceRequest


def _group(values: list[float], early: Callable[[dict[str, np.ndarray]], Any] | None) -> InferenceRequest:
    x = np.array([[v] * 4 for v in values], dtype=np.float32)
    return InferenceRequest({"x": x}, batch_size=len(values), group_arrivals_ns=[0] * len(values), answer_early=early)


def test_answered_on_the_instance_thread_after_the_completion_is_posted() -> None:
    async def main() -> None:
        instance = FakeInstance(compute_s=0.002)
        batcher = scheduler([instance])
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, Any]] = []
        counted = loop.create_future()

        def early(outputs: dict[str, np.ndarray]) -> Callable[[], None]:
            seen.append((threading.current_thread().name, outputs["y"].copy()))

            def send() -> None:  # what the client can trigger once it has its answer runs after this
                loop.call_soon_threadsafe(lambda: counted.set_result(batcher.stats.success.as_dict()["count"]))

            return send

        result = await batcher.submit(_group([1.0, 2.0], early))
        assert [name for name, _ in seen] == ["m-v1-i0"]  # the instance's worker thread, once
        np.testing.assert_array_equal(seen[0][1], result["y"])
        np.testing.assert_array_equal(result["y"][:, 0], [2.0, 4.0])
        assert await counted == 2  # both requests of the group were counted before the answer
        batcher.close()

    asyncio.run(main())


def test_a_failed_batch_is_not_answered_early() -> None:
    async def main() -> None:
        batcher = scheduler([FakeInstance(compute_s=0.002)])
        calls: list[int] = []
        with pytest.raises(BackendError, match="negative input"):
            await batcher.submit(_group([-1.0], lambda outputs: calls.append(1)))
        assert calls == []  # the loop's path fails it
        batcher.close()

    asyncio.run(main())


def test_with_requests_waiting_the_loop_answers_and_the_instance_goes_on() -> None:
    async def main() -> None:
        instance = FakeInstance(gated=True)
        batcher = scheduler([instance])
        calls: list[int] = []
        first = asyncio.ensure_future(batcher.submit(_group([1.0], lambda outputs: calls.append(1))))
        await asyncio.sleep(0)  # the group runs (held at the gate)
        second = asyncio.ensure_future(batcher.submit(InferenceRequest({"x": np.ones((1, 4), np.float32)})))
        await asyncio.sleep(0)  # queued behind it
        instance.gate.set()
        assert (await first)["y"][0, 0] == 2.0 and (await second)["y"][0, 0] == 2.0
        assert calls == []  # a request was waiting when the group finished: not answered from the thread
        batcher.close()

    asyncio.run(main())


def test_an_idle_instance_starts_a_group_at_once() -> None:
    async def main() -> None:
        instance = FakeInstance(gated=True)
        batcher = scheduler([instance])
        task = asyncio.ensure_future(batcher.submit(_group([1.0], None)))
        await asyncio.sleep(0)  # one turn of the loop: submit ran up to its await
        assert len(batcher._queue) == 0  # dispatched inside submit, not on a later turn
        instance.gate.set()
        assert (await task)["y"][0, 0] == 2.0
        plain = asyncio.ensure_future(batcher.submit(InferenceRequest({"x": np.ones((1, 4), np.float32)})))
        await asyncio.sleep(0)
        assert len(batcher._queue) == 1  # a plain request still waits for the loop's turn to batch
        assert (await plain)["z"][0, 0] == 2.0
        batcher.close()

    asyncio.run(main())


# -- a real server ---------------------------------------------------------------------------------

WIDTH = 256
LAYERS = 6
MLP_CONFIG = f"""
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
dynamic_batching {{ }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
"""


def _mlp_onnx() -> tuple[bytes, list[np.ndarray]]:
    """y = relu(...relu(x W1)... W6): hundreds of µs per item, so it never runs inline on the loop."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx_models import finish_model

    rng = np.random.default_rng(7)
    weights = [(rng.standard_normal((WIDTH, WIDTH)) / 16).astype(np.float32) for _ in range(LAYERS)]
    nodes, inits, current = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [out])]
        current = out

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", WIDTH])

    graph = helper.make_graph(nodes, "mlp", [tensor("x")], [tensor("y")], inits)
    return finish_model(graph), weights


@pytest.fixture(scope="module")
def mlp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[np.ndarray]]]:
    from server_harness import start_server, write_model

    from shipyard.serving_runtime.protocol import native_grpc

    if (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)
    repo: Path = tmp_path_factory.mktemp("repo")
    model, weights = _mlp_onnx()
    write_model(repo, "mlp", {1: model}, MLP_CONFIG)
    server = start_server(tmp_path_factory.mktemp("srv"), [repo], "--grpc-frontend", "native", wait_models=("mlp",))
    try:
        yield server, weights
    finally:
        server.stop()


def _reference(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    for w in weights:
        x = np.maximum(x @ w, 0)
    return x


def _ask(server: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import tritonclient.grpc as grpcclient

    x = np.random.default_rng(seed).standard_normal((1, WIDTH)).astype(np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        tensor = grpcclient.InferInput("x", [1, WIDTH], "FP32")
        tensor.set_data_from_numpy(x)
        return x, client.infer("mlp", [tensor]).as_numpy("y")
    finally:
        client.close()


def _successes(client: Any) -> int:
    stats = client.get_inference_statistics("mlp", "1", as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def test_each_answer_is_counted_before_the_client_can_ask(mlp_server: tuple[Any, list[np.ndarray]]) -> None:
    import tritonclient.grpc as grpcclient

    server, weights = mlp_server
    x = np.ones((1, WIDTH), np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        tensor = grpcclient.InferInput("x", [1, WIDTH], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("mlp", [tensor])  # the first answer registers the model with the fast path
        for _ in range(40):
            before = _successes(client)
            y = client.infer("mlp", [tensor]).as_numpy("y")
            assert _successes(client) == before + 1
            np.testing.assert_allclose(y, _reference(x, weights), rtol=1e-4, atol=1e-4)
    finally:
        client.close()
    assert "gRPC ModelInfer takes the native fast path" in server.log()


def test_concurrent_requests_get_their_own_answers(mlp_server: tuple[Any, list[np.ndarray]]) -> None:
    server, weights = mlp_server
    with ThreadPoolExecutor(8) as pool:
        for x, y in pool.map(lambda seed: _ask(server, seed), range(64)):
            np.testing.assert_allclose(y, _reference(x, weights), rtol=1e-4, atol=1e-4)


# -- eager start of a fast-path group (protocol/eager.py) ----------------------------------------


def test_start_eagerly_runs_at_once_then_as_a_task() -> None:
    from shipyard.serving_runtime.protocol.eager import start_eagerly

    async def main() -> None:
        loop = asyncio.get_running_loop()
        steps: list[str] = []
        gate = loop.create_future()

        async def work() -> str:
            steps.append("started")
            value = await gate
            steps.append("resumed")
            return value

        task = start_eagerly(loop, work())
        assert steps == ["started"]  # before any turn of the loop
        assert task is not None and not task.done()
        gate.set_result("done")
        assert await task == "done" and steps == ["started", "resumed"]

        async def quick() -> int:
            return 7

        assert start_eagerly(loop, quick()) is None  # finished without waiting

        cleaned: list[str] = []

        async def cancelled() -> None:
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                cleaned.append("cleanup ran")  # as the fast path fails its group on shutdown
                raise

        task = start_eagerly(loop, cancelled())
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["cleanup ran"] and task.cancelled()

        async def failing() -> None:
            await asyncio.sleep(0)
            raise ValueError("boom")

        task = start_eagerly(loop, failing())
        assert task is not None
        with pytest.raises(ValueError, match="boom"):
            await task

    asyncio.run(main())
