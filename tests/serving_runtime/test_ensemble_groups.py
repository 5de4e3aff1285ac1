"""An ensemble runs a native fast-path group together (``scheduling/ensemble_group.py``).

Real servers on loopback, real tritonclient, a real 3-step ensemble ``chain``: Python ``pre``
(Y = X + 1) -> ONNX Runtime ``double`` (y = 2x) -> Python ``post`` (Y = X * 10, N = rows).
A server with the fast path (each step one group of its model) and one without
(``--no-grpc-fast-path``, each request through each step on its own) must give byte-identical
answers and errors; concurrent requests, some failing at the first step and some at the last,
each get their own answer; every Python ``execute`` still sees one request per client request;
statistics count requests per request and executions per batch, as on the Python path; a client
that cancels is seen by the step its request is in (``is_cancelled()``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_harness import ServerProcess, double_onnx, grpc_answer, start_server, write_model
from tritonclient.utils import InferenceServerException

PY_CONFIG = """
backend: "python"
max_batch_size: 64
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }}{extra} ]
dynamic_batching {{ }}
"""

# X[0, 0] == -1: pre refuses the request (naming its id)
PRE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        pb_utils.Logger.log_info(f"pre execute of {len(requests)} requests")
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if x[0, 0] == -1:
                error = pb_utils.TritonError(f"pre refused {request.request_id()!r}")
                out.append(pb_utils.InferenceResponse(error=error))
                continue
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x + 1).astype(np.float32))]))
        return out
"""

# its X[0, 0] == 42 (the client's 20): post refuses; == -4 (the client's -3): waits for the cancel
POST = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        pb_utils.Logger.log_info(f"post execute of {len(requests)} requests")
        pb_utils.Logger.log_info("post ran " + " ".join(r.request_id() or "-" for r in requests))
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if x[0, 0] == 42:
                error = pb_utils.TritonError(f"post refused {request.request_id()!r}")
                out.append(pb_utils.InferenceResponse(error=error))
                continue
            if x[0, 0] == -4:
                deadline = time.monotonic() + 1.5
                while not request.is_cancelled() and time.monotonic() < deadline:
                    time.sleep(0.01)
                if request.is_cancelled():
                    pb_utils.Logger.log_info(f"request {request.request_id()} saw is_cancelled()")
            rows = np.full((x.shape[0], 1), x.shape[0], np.int32)
            tensors = [pb_utils.Tensor("Y", (x * 10).astype(np.float32)), pb_utils.Tensor("N", rows)]
            wanted = request.requested_output_names()
            out.append(pb_utils.InferenceResponse([t for t in tensors if t.name() in wanted]))
        return out
"""

DOUBLE = """
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { }
"""

CHAIN = """
platform: "ensemble"
max_batch_size: 64
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "ROWS" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "pre" model_version: -1 input_map { key: "X" value: "IN" } output_map { key: "Y" value: "a" } },
  { model_name: "double" model_version: -1 input_map { key: "x" value: "a" } output_map { key: "y" value: "b" } },
  { model_name: "post" model_version: -1 input_map { key: "X" value: "b" }
    output_map [ { key: "Y" value: "OUT" }, { key: "N" value: "ROWS" } ] }
] }
"""

MODELS = ("chain", "pre", "double", "post")


def _repository(root: Path) -> Path:
    for name, source, extra in (("pre", PRE, ""), ("post", POST, ', { name: "N" data_type: TYPE_INT32 dims: [ 1 ] }')):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(PY_CONFIG.format(extra=extra))
        (root / name / "1" / "model.py").write_text(source)
    write_model(root, "double", {1: double_onnx(4)}, DOUBLE)
    (root / "chain" / "1").mkdir(parents=True)
    (root / "chain" / "config.pbtxt").write_text(CHAIN)
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """(fast path with ensemble groups, no fast path) over the same repository."""
    from shipyard.serving_runtime.protocol import native_fast_python, native_grpc

    if (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)
    if not native_fast_python.supported():
        pytest.skip("the native gRPC module predates FastBatch.answer_each; rebuild it with `make native`")
    repo = _repository(tmp_path_factory.mktemp("repo"))
    started: list[ServerProcess] = []
    previous = os.environ.pop(native_fast_python.GROUPS_ENV, None)
    try:
        for flags in ((), ("--no-grpc-fast-path",)):
            dirname = tmp_path_factory.mktemp("ensgroup")
            started.append(start_server(dirname, [repo], "--grpc-frontend", "native", *flags, wait_models=MODELS))
        fast = started[0]
        _infer(fast, _x(1, 0.0))
        line = "model 'chain' version (default): gRPC ModelInfer takes the native fast path"
        fast.wait_until(lambda: line in fast.log(), 10, "the fast path registration")
        yield started[0], started[1]
    finally:
        if previous is not None:
            os.environ[native_fast_python.GROUPS_ENV] = previous
        for server in started:
            server.stop()


def _x(rows: int, first: float, seed: float = 0.0) -> list[Any]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + seed
    x[0, 0] = first
    tensor = grpcclient.InferInput("IN", [rows, 4], "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def _infer(server: ServerProcess, inputs: list[Any], **kwargs: Any) -> bytes | tuple[str, str]:
    return grpc_answer(server, "chain", inputs=inputs, **kwargs)


CASES: list[dict[str, Any]] = [
    {"inputs": _x(1, 0.0)},
    {"inputs": _x(3, 5.0), "request_id": "id-3"},
    {"inputs": _x(2, 1.0), "outputs": [grpcclient.InferRequestedOutput("ROWS")]},
    {"inputs": _x(2, -1.0), "request_id": "bad-pre"},  # the first step's error
    {"inputs": _x(2, 20.0), "request_id": "bad-post"},  # the last step's error
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_answers_and_errors_are_byte_identical_to_the_python_path(
    servers: tuple[ServerProcess, ServerProcess], case: int
) -> None:
    fast, slow = servers
    got, want = _infer(fast, **CASES[case]), _infer(slow, **CASES[case])
    assert got == want
    if case == 3:
        assert got == ("StatusCode.INTERNAL", "in ensemble 'chain', pre refused 'bad-pre'")


def _stats(server: ServerProcess) -> dict[str, dict[str, int]]:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        out = {}
        for name in MODELS:
            [entry] = client.get_inference_statistics(name, as_json=True)["model_stats"]
            stats = entry["inference_stats"]
            out[name] = {
                "success": int(stats.get("success", {}).get("count", 0)),
                "fail": int(stats.get("fail", {}).get("count", 0)),
                "inferences": int(entry.get("inference_count", 0)),
                "executions": int(entry.get("execution_count", 0)),
            }
        return out
    finally:
        client.close()


def _concurrently(server: ServerProcess, count: int) -> dict[int, Any]:
    """``count`` requests from 24 clients at once; request i fails at pre when i % 7 == 0, at
    post when i % 7 == 3 (20 at its first element), else answers."""

    def one(i: int) -> tuple[int, Any]:
        rows = 1 + i % 3
        first = -1.0 if i % 7 == 0 else 20.0 if i % 7 == 3 else 1000.0 + i
        own = grpcclient.InferenceServerClient(server.grpc_host)
        try:
            result = own.infer("chain", _x(rows, first, seed=i), request_id=f"r{i}")
        except InferenceServerException as exc:
            return i, str(exc.message())
        finally:
            own.close()
        return i, (result.get_response().id, result.as_numpy("OUT"), result.as_numpy("ROWS"))

    with ThreadPoolExecutor(24) as pool:
        return dict(pool.map(one, range(count)))


def _delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in after}


def test_a_group_with_failing_requests_answers_each_and_counts_as_the_python_path(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    fast, slow = servers
    counted = {}
    for server in (fast, slow):
        before, executes_before = _stats(server), len(_executes(server, "pre"))
        answers = _concurrently(server, 140)
        counted[server.grpc_host] = delta = _delta(before, _stats(server))
        for i, answer in answers.items():
            rows = 1 + i % 3
            if i % 7 == 0:
                assert answer == f"in ensemble 'chain', pre refused 'r{i}'", i
                continue
            if i % 7 == 3:
                assert answer == f"in ensemble 'chain', post refused 'r{i}'", i
                continue
            x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + i
            x[0, 0] = 1000.0 + i
            assert answer[0] == f"r{i}"
            np.testing.assert_array_equal(answer[1], (x + 1) * 2 * 10)
            np.testing.assert_array_equal(answer[2], np.full((rows, 1), rows, np.int32))
        executes = _executes(server, "pre")[executes_before:]
        assert sum(executes) == 140  # one InferenceRequest per client request, however grouped
        assert delta["pre"]["executions"] == len(executes)
    fast_delta, slow_delta = counted[fast.grpc_host], counted[slow.grpc_host]
    # requests: per request on both paths (120 reach double, 100 succeed at post)
    assert fast_delta["chain"]["success"] == slow_delta["chain"]["success"] == 100
    assert fast_delta["chain"]["fail"] == slow_delta["chain"]["fail"] == 40
    for name, requests in (("pre", 140), ("double", 120), ("post", 120)):
        assert fast_delta[name]["success"] + fast_delta[name]["fail"] == requests, name
        assert fast_delta[name]["success"] == slow_delta[name]["success"], name
        assert fast_delta[name]["inferences"] == slow_delta[name]["inferences"], name
    # executions: per batch; the groups batched (fewer executions than requests)
    assert fast_delta["double"]["executions"] < 120
    assert fast_delta["chain"]["executions"] == slow_delta["chain"]["executions"] == 100  # one per answered request


def _executes(server: ServerProcess, model: str) -> list[int]:
    return [int(n) for n in re.findall(rf"{model} execute of (\d+) requests", server.log())]


def test_a_step_sees_its_client_cancel(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, _ = servers
    client = grpcclient.InferenceServerClient(fast.grpc_host)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("chain", _x(1, -3.0), request_id="cancel-me", client_timeout=0.3)
    client.close()
    assert "DEADLINE_EXCEEDED" in str(raised.value.status())
    fast.wait_until(lambda: "request cancel-me saw is_cancelled()" in fast.log(), 10, "post to see is_cancelled()")
    assert _infer(fast, _x(1, 0.0)) == _infer(servers[1], _x(1, 0.0))  # and it serves on


def test_a_request_whose_client_leaves_while_its_step_is_queued_never_runs_there(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """As on the Python path: it leaves the step's queue (the step counts it CANCELED, its
    ``execute`` never sees it) while the request ahead of it holds the step's instance."""
    deltas = []
    for server in servers:
        before = _stats(server)
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(_infer, server, _x(1, -3.0), request_id="ahead")  # holds post 1.5 s
            time.sleep(0.4)
            left = _infer(server, _x(1, 5.0), request_id="left-in-queue", client_timeout=0.3)
            assert isinstance(ahead.result(), bytes)
        assert isinstance(left, tuple) and "DEADLINE_EXCEEDED" in left[0]
        assert "left-in-queue" not in " ".join(re.findall(r"post ran (.*)", server.log()))
        deltas.append(_delta(before, _stats(server)))
    fast, slow = deltas
    assert fast["post"] == slow["post"]
    assert (fast["post"]["success"], fast["post"]["fail"]) == (1, 1)
    assert fast["chain"]["fail"] == slow["chain"]["fail"] == 1


async def test_groups_that_reach_a_step_together_run_as_one_batch(tmp_path: Path) -> None:
    """Two groups submitted on the same turn of the event loop (as the groups of one batch of the
    step before are answered) join one batch of an idle step model, not one batch each."""
    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.scheduling import InferenceRequest

    repo = tmp_path / "repo"
    write_model(repo, "double", {1: double_onnx(4)}, DOUBLE)
    (repo / "twice" / "1").mkdir(parents=True)
    (repo / "twice" / "config.pbtxt").write_text(TWICE)
    manager = ModelManager([repo], "none")
    await manager.start()
    try:
        ensemble = manager.get("twice")

        def group(seed: int) -> list[InferenceRequest]:
            return [
                InferenceRequest({"IN": np.full((rows, 4), seed + rows, np.float32)}, batch_size=rows)
                for rows in (1, 2)
            ]

        answers = await asyncio.gather(
            ensemble.scheduler.submit_group(group(0)), ensemble.scheduler.submit_group(group(10))
        )
        for seed, parts in zip((0, 10), answers, strict=True):
            for rows, part in zip((1, 2), parts, strict=True):
                np.testing.assert_array_equal(part["OUT"], np.full((rows, 4), 2 * (seed + rows), np.float32))
        [double] = [s for s in manager.all_stats() if s.name == "double"]
        [twice] = [s for s in manager.all_stats() if s.name == "twice"]
        assert (double.execution_count, double.inference_count) == (1, 6)  # one batch of both groups
        assert twice.as_triton_dict()["inference_stats"]["success"]["count"] == 4  # each request
    finally:
        await manager.shutdown()


TWICE = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "double" model_version: -1 input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } }
] }
"""


def test_requests_whose_clients_leave_while_their_step_group_is_queued_leave_it(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """``post`` is busy (a request that waits 1.5 s in it); requests whose deadline passes while
    they wait in ``post``'s queue (in a step group on the fast path) never reach its ``execute``
    and count as CANCELED there, as on the Python path; the others get the same bytes."""
    got = []
    for server in servers:
        before, executes_before = _stats(server), len(_executes(server, "post"))
        with ThreadPoolExecutor(12) as pool:
            blocker = pool.submit(_infer, server, _x(1, -3.0), request_id="blocker", client_timeout=30)
            time.sleep(0.3)
            jobs = [(f"left{i}", 0.7) for i in range(4)] + [(f"stay{i}", 30.0) for i in range(4)]
            futures = {
                tag: pool.submit(_infer, server, _x(2, 500.0 + i, seed=i), request_id=tag, client_timeout=timeout)
                for i, (tag, timeout) in enumerate(jobs)
            }
            answers = {tag: future.result() for tag, future in futures.items()}
            assert isinstance(blocker.result(), bytes)
        time.sleep(0.3)
        delta = _delta(before, _stats(server))
        executed = sum(_executes(server, "post")[executes_before:])
        got.append((answers, {m: {k: delta[m][k] for k in ("success", "fail")} for m in delta}, executed))
    for answers, delta, executed in got:
        assert all(answers[f"left{i}"] == ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded") for i in range(4))
        assert all(isinstance(answers[f"stay{i}"], bytes) for i in range(4))
        assert delta["post"] == {"success": 5, "fail": 4}, delta
        assert executed == 5  # post's execute saw the blocker and the four that stayed
    assert got[0] == got[1]


async def test_a_lone_clients_python_steps_go_from_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SHIPYARD_PYTHON_LOOP_CALL=auto, at c=1 (one client, requests one after another) each Python
    step's group of one request goes from the event loop to the model's process and back (as a lone
    plain request does), not through the instance's worker thread, and the ONNX step runs on the event
    loop itself (once its compute time is known); two clients at once take the worker threads again.
    The answers are the models' either way."""
    import threading

    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.scheduling import InferenceRequest, inline
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    monkeypatch.setenv("SHIPYARD_PYTHON_LOOP_CALL", "auto")
    monkeypatch.delenv("SHIPYARD_ENSEMBLE_INLINE", raising=False)
    monkeypatch.setattr(DynamicBatcher, "process_pending", 0)  # whatever other tests left behind
    # as for a model that computes for longer than a tiny model's inline run (the 4-float ONNX
    # model here would otherwise run on the loop whatever the load: scheduling/inline.py's docstring)
    monkeypatch.setattr(inline, "INLINE_MAX_COMPUTE_NS", 0)
    manager = ModelManager([_repository(tmp_path / "repo")], "none")
    await manager.start()
    on_worker: list[str] = []
    try:
        for name in ("pre", "post"):
            instance = manager.get(name).scheduler._workers[0].instance
            through_thread = instance.execute_requests

            def counted(requests: list[Any], name: str = name, through: Any = through_thread) -> list[Any]:
                if threading.current_thread() is not threading.main_thread():
                    on_worker.append(name)
                return through(requests)

            monkeypatch.setattr(instance, "execute_requests", counted)
        onnx = manager.get("double").scheduler._workers[0].instance
        onnx_execute = onnx.execute
        onnx_threads: list[bool] = []  # per ONNX step: on the event loop's (main) thread

        def execute(*args: Any) -> Any:
            onnx_threads.append(threading.current_thread() is threading.main_thread())
            return onnx_execute(*args)

        monkeypatch.setattr(onnx, "execute", execute)
        chain = manager.get("chain").scheduler

        async def one(value: float) -> None:
            [answer] = await chain.submit_group([InferenceRequest({"IN": np.full((1, 4), value, np.float32)})])
            np.testing.assert_array_equal(answer["OUT"], np.full((1, 4), (value + 1) * 20, np.float32))

        for i in range(4):
            await one(float(i))
        assert on_worker == []  # every Python step went from the loop
        assert onnx_threads[1:] == [True] * 3  # the first one measured its compute on the worker
        onnx_threads.clear()
        await asyncio.gather(one(5.0), one(6.0))
        assert on_worker, "two clients at once: the worker thread, where batches form"
        assert onnx_threads == [False]  # one batch of both, on the worker
    finally:
        await manager.shutdown()
