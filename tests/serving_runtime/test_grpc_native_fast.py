"""The native fast path for ModelInfer (``protocol/native_fast.py``, ``native/fast_infer.h``).

Real servers on loopback, real tritonclient: the same requests against a server with the fast
path (the default with the native frontend) and one without (``--no-grpc-fast-path``) must get
byte-identical responses and identical errors; concurrent requests each get their own rows;
statistics and Prometheus count every request; a reload or unload never serves a stale version.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_harness import (
    SIMPLE_CONFIG,
    ServerProcess,
    grpc_answer,
    metric_value,
    simple_onnx,
    slow_onnx,
    start_server,
    write_model,
)
from tritonclient.utils import InferenceServerException

BATCHED_CONFIG = SIMPLE_CONFIG.replace('name: "simple"', 'name: "batched"').replace(
    "instance_group", "dynamic_batching { }\ninstance_group"
)


BOUNDED_CONFIG = BATCHED_CONFIG.replace('name: "batched"', 'name: "bounded"').replace(
    "dynamic_batching { }", "dynamic_batching { default_queue_policy { max_queue_size: 3 } }"
)


# a canary: unversioned requests go to version 2 half of the time (each on its own draw)
CANARY_CONFIG = BATCHED_CONFIG.replace('name: "batched"', 'name: "canary"').replace(
    "dynamic_batching { }",
    'dynamic_batching { }\nparameters { key: "shipyard.canary" value: { string_value: "2:50" } }',
)

# two priority levels with a bounded default level: max_queue_size counts a group's requests there
PRIO_BOUNDED_CONFIG = BATCHED_CONFIG.replace('name: "batched"', 'name: "prio_bounded"').replace(
    "dynamic_batching { }",
    "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
    "priority_queue_policy { key: 1 value: { max_queue_size: 3 } } }",
)

# slow_onnx: 64 rows take 0.17-0.4 s, 33 rows ~0.1-0.2 s on one thread of these machines, one instance
SLOW_PRIO_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 512 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 512 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
dynamic_batching {{ {batching} }}
"""
# plain requests queue at the lower level 2; a request with priority 1 goes first
LOW_DEFAULT_CONFIG = SLOW_PRIO_CONFIG.format(name="lowdefault", batching="priority_levels: 2 default_priority_level: 2")
# the default level 1 times out after 100 ms in the queue (REJECT)
TIMEOUT_CONFIG = SLOW_PRIO_CONFIG.format(
    name="timeout",
    batching="priority_levels: 2 default_priority_level: 1 "
    "priority_queue_policy { key: 1 value: { default_timeout_microseconds: 100000 } }",
)

# the default level 1's requests move behind every other after 100 ms in the queue (DELAY)
DELAY_CONFIG = SLOW_PRIO_CONFIG.format(
    name="delay",
    batching="priority_levels: 2 default_priority_level: 1 "
    "priority_queue_policy { key: 1 value: { default_timeout_microseconds: 100000 timeout_action: DELAY } }",
)

# the default level 1 holds 2 requests at most
SLOW_BOUNDED_CONFIG = SLOW_PRIO_CONFIG.format(
    name="slowbounded",
    batching="priority_levels: 2 default_priority_level: 1 "
    "priority_queue_policy { key: 1 value: { max_queue_size: 2 } }",
)

# one instance, dynamic batching: requests queued behind a busy instance are grouped on the fast path
LEAVE_CONFIG = SLOW_PRIO_CONFIG.format(name="leave", batching="")

# level 2 is a background level: while real-time work is recent (1 s), its requests run in 8-row slices
BACKGROUND_CONFIG = SLOW_PRIO_CONFIG.format(
    name="background", batching="priority_levels: 2 default_priority_level: 1"
).replace(
    "parameters {",
    'parameters { key: "background_slice_rows" value: { string_value: "8" } }\n'
    'parameters { key: "background_recent_us" value: { string_value: "1000000" } }\nparameters {',
)
# plain requests at the background level: not on the fast path (its requests are sliced one by one)
BACKGROUND_DEFAULT_CONFIG = BATCHED_CONFIG.replace('name: "batched"', 'name: "bgdefault"').replace(
    "dynamic_batching { }",
    "dynamic_batching { priority_levels: 2 default_priority_level: 2 }\n"
    'parameters { key: "background_slice_rows" value: { string_value: "2" } }',
)


def _published_config(name: str) -> str:
    """The config the publish step writes for the simple model: two priority levels (plain requests at
    level 1), level 2 a background level."""
    from shipyard.components.publish.config_builder import TensorInfo, build_config
    from shipyard.serving_runtime.config import render_config

    def tensors(prefix: str) -> list[TensorInfo]:
        return [TensorInfo(f"{prefix}{i}", "FP32", (-1, 16)) for i in range(2)]

    config = build_config(name, "onnxruntime_onnx", tensors("INPUT"), tensors("OUTPUT"), max_batch_size=8)
    assert config.dynamic_batching.priority_levels == 2
    return render_config(config)


VARLEN_CONFIG = """
name: "varlen"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { }
"""


def _varlen_onnx() -> bytes:
    """y = x + x, FP32 [batch, n] with n free: requests group only with requests of their own width."""
    from onnx import TensorProto, helper
    from onnx_models import finish_model

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "n"])

    return finish_model(
        helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "varlen", [tensor("x")], [tensor("y")])
    )


def _native_or_skip() -> None:
    from shipyard.serving_runtime.protocol import native_grpc

    if (reason := native_grpc.unavailable_reason()) is not None:
        pytest.skip(reason)


def _repository(root: Path) -> Path:
    write_model(root, "batched", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, BATCHED_CONFIG)
    write_model(root, "simple", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, SIMPLE_CONFIG)  # default scheduler
    write_model(root, "bounded", {1: simple_onnx(100.0)}, BOUNDED_CONFIG)
    write_model(root, "varlen", {1: _varlen_onnx()}, VARLEN_CONFIG)
    write_model(root, "canary", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, CANARY_CONFIG)
    write_model(root, "published", {1: simple_onnx(100.0)}, _published_config("published"))
    write_model(root, "prio_bounded", {1: simple_onnx(100.0)}, PRIO_BOUNDED_CONFIG)
    write_model(root, "lowdefault", {1: slow_onnx()}, LOW_DEFAULT_CONFIG)
    # 3x deeper: the blocker must outlast a 100 ms queue timeout started after it has run 50 ms of CPU
    # and the wave's connections are set up (the default depth's 64 rows took 0.17 s on a fast VM)
    write_model(root, "timeout", {1: slow_onnx(depth=3000)}, TIMEOUT_CONFIG)
    write_model(root, "slowbounded", {1: slow_onnx()}, SLOW_BOUNDED_CONFIG)
    write_model(root, "delay", {1: slow_onnx(depth=3000)}, DELAY_CONFIG)
    write_model(root, "background", {1: slow_onnx()}, BACKGROUND_CONFIG)
    write_model(root, "bgdefault", {1: simple_onnx(0.0)}, BACKGROUND_DEFAULT_CONFIG)
    write_model(root, "leave", {1: slow_onnx()}, LEAVE_CONFIG)
    return root


MODELS = (
    "canary",
    "batched",
    "simple",
    "bounded",
    "varlen",
    "published",
    "prio_bounded",
    "lowdefault",
    "timeout",
    "slowbounded",
    "leave",
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """(fast path on, fast path off) over the same repository."""
    _native_or_skip()
    repo = _repository(tmp_path_factory.mktemp("repo"))
    started: list[ServerProcess] = []
    try:
        for flags in ((), ("--no-grpc-fast-path",)):
            started.append(
                start_server(
                    tmp_path_factory.mktemp("fast"),
                    [repo],
                    "--grpc-frontend",
                    "native",
                    *flags,
                    wait_models=MODELS,
                )
            )
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def _registered(server: ServerProcess, model: str, version: str = "(default)") -> None:
    """Wait for the log line of ``model``'s registration (logged just after the first answer went out)."""
    line = f"model {model!r} version {version}: gRPC ModelInfer takes the native fast path"
    server.wait_until(lambda: line in server.log(), 10, line)


def _inputs(batch: int, seed: float, names: tuple[str, ...] = ("INPUT0", "INPUT1")) -> list[Any]:
    inputs = []
    for k, name in enumerate(names):
        tensor = grpcclient.InferInput(name, [batch, 16], "FP32")
        tensor.set_data_from_numpy(np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) * (k + 1) + seed)
        inputs.append(tensor)
    return inputs


_infer = grpc_answer


CASES: list[tuple[str, dict[str, Any]]] = [
    ("batched", {"inputs": _inputs(1, 0.5)}),
    ("batched", {"inputs": _inputs(3, 1.0), "request_id": "id-3"}),
    ("batched", {"inputs": _inputs(2, 2.0), "model_version": "1"}),
    ("batched", {"inputs": _inputs(2, 2.0), "outputs": [grpcclient.InferRequestedOutput("OUTPUT1")]}),
    ("batched", {"inputs": list(reversed(_inputs(2, 6.0)))}),  # inputs in another order
    (
        "batched",
        {
            "inputs": _inputs(1, 3.0),
            "outputs": [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT1", "OUTPUT0", "OUTPUT1")],
        },
    ),
    ("simple", {"inputs": _inputs(4, 4.0), "request_id": "s"}),
    ("simple", {"inputs": _inputs(1, 5.0), "model_version": "1"}),
    # errors: the Python path answers them, on both servers
    ("batched", {"inputs": _inputs(9, 0.0)}),  # above max_batch_size
    ("batched", {"inputs": _inputs(1, 0.0, ("INPUT0",))}),  # a missing input
    ("batched", {"inputs": _inputs(1, 0.0, ("INPUT0", "INPUT1", "INPUT2"))}),  # an unknown input
    ("batched", {"inputs": _inputs(1, 0.0), "outputs": [grpcclient.InferRequestedOutput("NOPE")]}),
    ("batched", {"inputs": _inputs(1, 0.0), "model_version": "7"}),
    ("batched", {"inputs": _inputs(1, 0.0), "priority": 3}),  # a priority on a model without levels
    ("batched", {"inputs": _inputs(1, 0.0), "parameters": {"custom": "kept"}}),  # valid, Python path
    ("missing", {"inputs": _inputs(1, 0.0)}),
    # two priority levels as publish writes them: plain requests on the fast path, the rest on Python's
    ("published", {"inputs": _inputs(3, 7.0), "request_id": "p"}),
    ("published", {"inputs": _inputs(1, 8.0), "outputs": [grpcclient.InferRequestedOutput("OUTPUT1")]}),
    ("published", {"inputs": _inputs(2, 9.0), "priority": 2}),
    ("published", {"inputs": _inputs(2, 9.0), "priority": 1}),
    ("published", {"inputs": _inputs(2, 9.0), "priority": 7}),  # out of range: the default
    ("canary", {"inputs": _inputs(2, 1.0), "model_version": "1"}),  # a version named: never rerouted
]


def test_fast_path_is_used(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, slow = servers
    for _ in range(2):
        for model, version in (
            ("batched", ""),
            ("simple", "1"),
            ("published", ""),
            ("canary", "2"),
            ("canary", ""),
            ("bgdefault", ""),
        ):
            _infer(fast, model, inputs=_inputs(1, 0.0), model_version=version)
    for model, version in (("published", "(default)"), ("canary", "2"), ("batched", "(default)"), ("simple", "1")):
        _registered(fast, model, version)
    log = fast.log()
    assert "model 'canary' version (default)" not in log
    assert "model 'bgdefault'" not in log  # each unversioned request draws its version
    assert "ModelInfer fast path on" in log
    assert "model 'batched' version (default): gRPC ModelInfer takes the native fast path" in log
    assert "model 'simple' version 1: gRPC ModelInfer takes the native fast path" in log
    assert "fast path" not in slow.log()


@pytest.mark.parametrize("case", range(len(CASES)))
def test_same_answers_as_the_python_path(servers: tuple[ServerProcess, ServerProcess], case: int) -> None:
    fast, slow = servers
    model, kwargs = CASES[case]
    for _ in range(2):  # the first request of a model registers it; the second takes the fast path
        got, want = _infer(fast, model, **kwargs), _infer(slow, model, **kwargs)
        assert got == want


def _rows(server: ServerProcess, model: str, count: int, batch: int, refused: list[str] | None = None) -> None:
    """``count`` concurrent requests of ``batch`` items, each checked against its own inputs;
    QueueFull answers are collected in ``refused`` when given (else they fail the test)."""

    def one(i: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_host)
        try:
            try:
                result = client.infer(model, _inputs(batch, float(i)), request_id=str(i))
            except InferenceServerException as exc:
                if refused is None or exc.status() != "StatusCode.UNAVAILABLE":
                    raise
                refused.append(str(exc.message()))
                return
            assert result.get_response().id == str(i)
            base = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), base * 3 + 2 * i + 100)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), -base)
        finally:
            client.close()

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(count)))


def _stats(server: ServerProcess, model: str, version: str) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(server.grpc_host)
    stats = client.get_inference_statistics(model, version, as_json=True)
    client.close()
    return dict(stats["model_stats"][0])


_metric = metric_value


def test_concurrent_requests_get_their_own_rows_and_are_counted(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, _ = servers
    _infer(fast, "batched", inputs=_inputs(1, 0.0))  # registered
    before = _stats(fast, "batched", "2")
    success_before = _metric(fast, "nv_inference_request_success", "batched", "2")
    _rows(fast, "batched", 300, 2)
    after = _stats(fast, "batched", "2")
    done = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    assert done == 300
    assert int(after["inference_count"]) - int(before["inference_count"]) == 600
    assert int(after["inference_stats"]["queue"]["count"]) - int(before["inference_stats"]["queue"]["count"]) == 300
    assert _metric(fast, "nv_inference_request_success", "batched", "2") - success_before == 300


@pytest.fixture
def explicit(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    _native_or_skip()
    repo = tmp_path / "repo"
    write_model(
        repo, "batched", {1: simple_onnx(0.0)}, BATCHED_CONFIG.replace("{ all { } }", "{ latest { num_versions: 1 } }")
    )
    server = start_server(
        tmp_path,
        [repo],
        "--grpc-frontend",
        "native",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "batched",
        wait_models=("batched",),
    )
    yield server, repo
    server.stop(signal.SIGTERM)


def test_reload_and_unload_never_serve_a_stale_version(explicit: tuple[ServerProcess, Path]) -> None:
    server, repo = explicit
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        for _ in range(3):
            assert client.infer("batched", _inputs(6, 0.0)).get_response().model_version == "1"
        # a new version with a smaller max_batch_size: the registered signature (8) must not be used
        write_model(
            repo, "batched", {2: simple_onnx(100.0)}, BATCHED_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4")
        )
        client.load_model("batched")
        with pytest.raises(InferenceServerException, match="above max_batch_size 4"):
            client.infer("batched", _inputs(6, 0.0))
        for _ in range(3):
            result = client.infer("batched", _inputs(2, 0.0))
            assert result.get_response().model_version == "2"
            assert result.as_numpy("OUTPUT0")[0, 0] == 100.0
        client.unload_model("batched")
        with pytest.raises(InferenceServerException) as failed:
            client.infer("batched", _inputs(2, 0.0))
        assert failed.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()


@pytest.mark.parametrize("model", ["bounded", "prio_bounded"])
def test_a_bounded_queue_counts_each_request(servers: tuple[ServerProcess, ServerProcess], model: str) -> None:
    fast, _ = servers
    _infer(fast, model, inputs=_inputs(1, 0.0))
    _registered(fast, model)
    before = _stats(fast, model, "1")
    refused: list[str] = []
    _rows(fast, model, 200, 1, refused)
    after = _stats(fast, model, "1")

    def count(stats: dict[str, Any], kind: str) -> int:
        return int(stats["inference_stats"][kind].get("count", 0))

    assert set(refused) <= {
        "queue for priority level 1 is full (3 requests, max_queue_size); retry later or raise max_queue_size"
    }
    assert count(after, "success") - count(before, "success") == 200 - len(refused)
    assert count(after, "fail") - count(before, "fail") == len(refused)


def _raw_call(server: ServerProcess, payload: bytes) -> tuple[str, bytes | str]:
    """Send ``payload`` as a ModelInfer message as it is; (status, response bytes or message)."""
    import grpc

    with grpc.insecure_channel(server.grpc_host) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            return "OK", call(payload, timeout=10)
        except grpc.RpcError as exc:
            return str(exc.code()), str(exc.details())


def test_mutated_messages_get_the_python_paths_answers(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """The C++ parser takes only what the Python path reads the same way: byte flips, truncations and
    insertions in a valid request get identical answers with and without the fast path."""
    from shipyard.serving_runtime.protocol.grpc_codec import encode_infer_request

    fast, slow = servers
    base = np.arange(32, dtype=np.float32).reshape(2, 16)
    valid = encode_infer_request(
        "batched", {"INPUT0": base, "INPUT1": base + 1}, request_id="x", outputs=["OUTPUT1"]
    ).SerializeToString()
    assert _raw_call(fast, valid) == _raw_call(slow, valid)
    rng = np.random.default_rng(21)
    accepted = 0
    for _ in range(150):
        data = bytearray(valid)
        kind = rng.integers(3)
        at = int(rng.integers(len(data)))
        if kind == 0:
            data[at] = int(rng.integers(256))
        elif kind == 1:
            del data[at:]
        else:
            data[at:at] = bytes(rng.integers(256, size=int(rng.integers(1, 4)), dtype=np.uint8))
        got, want = _raw_call(fast, bytes(data)), _raw_call(slow, bytes(data))
        assert got == want, f"mutation {kind} at {at}: {bytes(data)!r}"
        accepted += got[0] == "OK"
    assert accepted > 0


def test_variable_dims_group_only_with_their_own_shape(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fast, _ = servers

    def one(i: int) -> None:
        width, batch = 3 + 2 * (i % 3), 1 + i % 2
        x = np.arange(batch * width, dtype=np.float32).reshape(batch, width) + i
        tensor = grpcclient.InferInput("x", [batch, width], "FP32")
        tensor.set_data_from_numpy(x)
        client = grpcclient.InferenceServerClient(fast.grpc_host)
        try:
            np.testing.assert_array_equal(client.infer("varlen", [tensor]).as_numpy("y"), x + x)
        finally:
            client.close()

    one(0)
    _registered(fast, "varlen")
    before = _stats(fast, "varlen", "1")
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(one, range(150)))
    after = _stats(fast, "varlen", "1")
    assert int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"]) == 150


def _slow(server: ServerProcess, model: str, rows: int, seed: float, priority: int = 0) -> tuple[str, str]:
    """One request of ``rows`` rows to a slow_onnx model, checked (a row of equal values is a fixed
    point of its MatMuls); ("OK", "") or (status, message)."""
    x = np.full((rows, 512), seed, dtype=np.float32)
    tensor = grpcclient.InferInput("x", [rows, 512], "FP32")
    tensor.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(server.grpc_host)
    try:
        result = client.infer(model, [tensor], priority=priority)
    except InferenceServerException as exc:
        return str(exc.status()), str(exc.message())
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("y"), x, rtol=1e-3)
    return "OK", ""


def _cpu_s(server: ServerProcess) -> float:
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_until_running(server: ServerProcess, cpu_before: float) -> None:
    """Until the idle server has burned 50 ms of CPU since ``cpu_before``: the blocker is running (a
    fixed sleep let a blocker delayed on a loaded machine start after the requests meant to queue)."""
    deadline = time.monotonic() + 10
    while _cpu_s(server) - cpu_before < 0.05:
        assert time.monotonic() < deadline, "the blocker never started running"
        time.sleep(0.005)


def _behind_a_blocker(server: ServerProcess, model: str, waves: list[list[tuple[str, int, int]]]) -> dict[str, Any]:
    """A 64-row request occupies the model's one instance (~0.4 s); meanwhile each wave of (tag, rows,
    priority) requests is sent, the first once the blocker runs, the next 0.1 s after the previous one.
    Each tag's answer, and ``order``: the tags in the order their answers came."""
    answers: dict[str, Any] = {"order": []}

    def one(tag: str, rows: int, priority: int) -> None:
        answers[tag] = _slow(server, model, rows, float(len(answers)), priority)
        answers["order"].append(tag)

    assert _slow(server, model, 1, 0.5) == ("OK", "")  # the first request registers the model
    if "ModelInfer fast path on" in server.log():
        _registered(server, model)
    with ThreadPoolExecutor(16) as pool:
        cpu = _cpu_s(server)
        futures = [pool.submit(one, "blocker", 64, 0)]
        _wait_until_running(server, cpu)
        for i, wave in enumerate(waves):
            if i:
                time.sleep(0.1)
            futures += [pool.submit(one, *request) for request in wave]
        for future in futures:
            future.result()
    return answers


def test_a_higher_priority_request_overtakes_queued_groups(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Plain requests (the fast path, the default level 2) queue behind a busy instance; a request with
    priority 1 sent after them runs in the next batch (33-row requests: one per batch beside it)."""
    fast, _ = servers
    lows = [(f"low{i}", 33, 0) for i in range(4)]
    answers = _behind_a_blocker(fast, "lowdefault", [lows, [("high", 1, 1)]])
    assert all(answers[tag] == ("OK", "") for tag, _, _ in [*lows, ("high", 1, 1)])
    order = answers["order"]
    assert order[0] == "blocker"
    assert sum(tag.startswith("low") for tag in order[: order.index("high")]) <= 1, order


def test_queue_timeouts_are_the_python_paths(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Plain requests queued past the default level's 100 ms timeout fail as on the Python path, each
    counted; a request at level 2 (no timeout) waits and runs."""
    got = []
    for server in servers:
        before = _stats(server, "timeout", "1")
        waves = [[(f"plain{i}", 1, 0) for i in range(4)] + [("level2", 1, 2)]]
        answers = _behind_a_blocker(server, "timeout", waves)
        after = _stats(server, "timeout", "1")
        failed = int(after["inference_stats"]["fail"]["count"]) - int(
            before["inference_stats"].get("fail", {}).get("count", 0)
        )
        got.append(({tag: answer for tag, answer in answers.items() if tag != "order"}, failed))
    timed_out = ("StatusCode.UNAVAILABLE", "request timed out in the queue of model 'timeout' version 1 before it ran")
    want = {**{f"plain{i}": timed_out for i in range(4)}, "blocker": ("OK", ""), "level2": ("OK", "")}
    assert got == [(want, 4), (want, 4)]


def test_delayed_groups_move_behind_lower_levels_as_on_the_python_path(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """Plain requests (level 1) past their 100 ms DELAY timeout move behind a level-2 request sent
    after them (64 rows: it runs alone), on both paths; without the timeout they would run first."""
    orders = []
    for server in servers:
        answers = _behind_a_blocker(server, "delay", [[("plain0", 1, 0), ("plain1", 1, 0)], [("level2", 64, 2)]])
        assert all(answers[tag] == ("OK", "") for tag in ("blocker", "plain0", "plain1", "level2"))
        orders.append([tag.rstrip("01") for tag in answers["order"]])
    assert orders == [["blocker", "level2", "plain", "plain"]] * 2


def test_a_full_priority_level_refuses_as_the_python_path(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Level 1 holds 2 requests: of 5 plain requests queued behind a busy instance (grouped on the fast
    path; a group that does not fit goes to the Python path), 3 are refused; level 2 is not bounded."""
    got = []
    for server in servers:
        answers = _behind_a_blocker(
            server, "slowbounded", [[(f"plain{i}", 1, 0) for i in range(5)], [("level2", 1, 2)]]
        )
        del answers["order"]
        got.append(sorted(answers.values()))
    full = "queue for priority level 1 is full (2 requests, max_queue_size); retry later or raise max_queue_size"
    want = sorted([("OK", "")] * 4 + [("StatusCode.UNAVAILABLE", full)] * 3)
    assert got == [want, want]


def test_fast_path_real_time_traffic_makes_background_requests_run_in_slices(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """A batch job's request (the background level 2) sent right after a plain request answered on the
    fast path runs in 8-row slices (real-time work is recent), as after a Python-path one."""
    fast, _ = servers
    assert _slow(fast, "background", 1, 0.5) == ("OK", "")  # registers the model
    _registered(fast, "background")

    def executions(size: int) -> int:
        for entry in _stats(fast, "background", "1").get("batch_stats", []):
            if int(entry["batch_size"]) == size:
                return int(entry["compute_infer"]["count"])
        return 0

    before = executions(8)
    assert _slow(fast, "background", 1, 1.0) == ("OK", "")  # real time, on the fast path
    assert _slow(fast, "background", 64, 2.0, priority=2) == ("OK", "")
    assert executions(8) > before


def _leave_answer(server: ServerProcess, tag: str, rows: int, seed: float, timeout: float) -> bytes | tuple[str, str]:
    x = np.full((rows, 512), seed, dtype=np.float32)
    tensor = grpcclient.InferInput("x", [rows, 512], "FP32")
    tensor.set_data_from_numpy(x)
    return grpc_answer(server, "leave", inputs=[tensor], request_id=tag, client_timeout=timeout)


def test_requests_whose_clients_leave_a_queued_group_leave_it_as_on_the_python_path(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """Behind a busy instance and a queued 64-row request, requests whose deadline passes while they
    wait (grouped with the others on the fast path) never run and count as CANCELED; the rest of
    their group runs without them and gets the Python path's bytes; the counts are the Python path's."""
    got = []
    for server in servers:
        assert _leave_answer(server, "warm", 1, 0.5, 60)[:1] != ("StatusCode",)  # registers the model
        if server is servers[0]:
            _registered(server, "leave")
        started = time.monotonic()
        _leave_answer(server, "time", 64, 0.5, 60)
        one = time.monotonic() - started  # a 64-row run
        before = _stats(server, "leave", "1")
        cancelled = _metric_reason(server, "leave", "CANCELED")
        with ThreadPoolExecutor(12) as pool:
            blockers = [pool.submit(_leave_answer, server, f"blocker{i}", 64, 1.0, 60) for i in range(2)]
            time.sleep(one / 10)
            jobs = [(f"left{i}", 4, float(i), one / 3) for i in range(5)] + [
                (f"stay{i}", 4, float(i), 60.0) for i in range(5)
            ]
            futures = {tag: pool.submit(_leave_answer, server, tag, rows, seed, t) for tag, rows, seed, t in jobs}
            answers = {tag: future.result() for tag, future in futures.items()}
            assert all(isinstance(blocker.result(), bytes) for blocker in blockers)
        time.sleep(0.3)
        after = _stats(server, "leave", "1")
        counts = {
            what: int(after["inference_stats"].get(what, {}).get("count", 0))
            - int(before["inference_stats"].get(what, {}).get("count", 0))
            for what in ("success", "fail")
        }
        got.append((answers, counts, _metric_reason(server, "leave", "CANCELED") - cancelled))
    for answers, counts, cancelled in got:
        assert {
            tag for tag, answer in answers.items() if answer == ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded")
        } == {f"left{i}" for i in range(5)}
        assert (counts, cancelled) == ({"success": 7, "fail": 5}, 5), answers
    stayed = [{tag: answer for tag, answer in answers.items() if tag.startswith("stay")} for answers, _, _ in got]
    assert stayed[0] == stayed[1] and all(isinstance(answer, bytes) for answer in stayed[0].values())


def _metric_reason(server: ServerProcess, model: str, reason: str) -> float:
    from server_harness import http_get

    body = http_get(server.http_url + "/metrics")[1].decode()
    for line in body.splitlines():
        if (
            line.startswith("nv_inference_request_failure{")
            and f'model="{model}"' in line
            and f'reason="{reason}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _gc_collected(server: ServerProcess) -> float:
    """Objects the server's cyclic garbage collector has freed so far (all generations)."""
    import re

    from server_harness import http_get

    body = http_get(server.http_url + "/metrics")[1].decode()
    return sum(float(v) for v in re.findall(r"^python_gc_objects_collected_total\{[^}]*\} (\S+)$", body, re.M))


def test_finished_groups_are_freed_without_the_cyclic_collector(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """A fast-path group's objects go as soon as it is answered (reference counting): with a reference
    cycle per group, the collector ran on the event loop every few hundred groups (1.6 ms each at
    c=64 on a tiny model) and freed thousands of objects in 1,500 requests.

    Two windows, the better one counts: the earlier tests' HTTP connections leave garbage of their own
    (uvicorn's protocol objects, ~25 per connection), which one collection may free inside either
    window, depending on where the allocation count stands (a collection can start inside the
    ``/metrics`` request that reads the count); a cycle per group fills both windows."""
    fast, _ = servers
    _infer(fast, "batched", inputs=_inputs(1, 0.0))  # registers it
    client = grpcclient.InferenceServerClient(fast.grpc_host)
    windows = []
    try:
        inputs = _inputs(1, 2.0)
        for _ in range(2):
            before = _gc_collected(fast)
            for _ in range(1500):
                client.infer("batched", inputs)
            windows.append(_gc_collected(fast) - before)
    finally:
        client.close()
    assert min(windows) < 1000, f"the collector freed {windows} objects over two windows of 1,500 fast-path requests"
