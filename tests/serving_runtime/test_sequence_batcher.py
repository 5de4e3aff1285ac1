"""The sequence batcher against a real server, driven by tritonclient's sequence API (http, grpc and
grpc streaming): the zoo's ONNX accumulator, whose running sum lives in implicit state, the
control inputs the model receives, in-order execution of interleaved sequences, the backlog, idle
release, and Triton's errors."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_harness import ServerProcess, start_server, write_model
from tritonclient.utils import InferenceServerException

from shipyard.zoo.onnx_models import accumulator_config, accumulator_model

pytestmark = pytest.mark.timeout(180)


def accumulator_onnx(corrid_string: bool = False) -> bytes:
    return bytes(accumulator_model(corrid_string).SerializeToString())


ACCUM_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    # the zoo accumulator's arithmetic, its running sum in the server's implicit state
    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            total = ((get("STATE_IN") * (1 - get("START")) + get("INPUT")) * get("READY")).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", total),
                pb_utils.Tensor("STATE_OUT", total),
                pb_utils.Tensor("END_OUT", get("END").astype(np.float32)),
                pb_utils.Tensor("CORRID_OUT", get("CORRID").astype(np.uint64)),
            ]))
        return responses
"""


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("seq-repo")
    write_model(repo, "accum", {1: accumulator_onnx()}, accumulator_config("accum", instances=2))
    write_model(
        repo,
        "accum_oldest",
        {1: accumulator_onnx()},
        accumulator_config("accum_oldest", strategy="oldest { max_candidate_sequences: 4 }", instances=2),
    )
    write_model(
        repo,
        "accum_str",
        {1: accumulator_onnx(True)},
        accumulator_config("accum_str", corrid="TYPE_STRING", instances=2),
    )
    write_model(
        repo, "accum_idle", {1: accumulator_onnx()}, accumulator_config("accum_idle", idle_us=300_000, instances=1)
    )
    write_model(
        repo,
        "accum_small",
        {1: accumulator_onnx()},
        accumulator_config("accum_small", max_batch_size=2, instances=1),
    )
    delay = "oldest { max_candidate_sequences: 8 max_queue_delay_microseconds: 500000 }"
    write_model(repo, "accum_delay", {1: accumulator_onnx()}, accumulator_config("accum_delay", strategy=delay))
    python_config = accumulator_config("accum_py").replace('platform: "onnxruntime_onnx"', 'backend: "python"')
    (repo / "accum_py" / "1").mkdir(parents=True)
    (repo / "accum_py" / "1" / "model.py").write_text(ACCUM_PY)
    (repo / "accum_py" / "config.pbtxt").write_text(python_config)
    server = start_server(tmp_path_factory.mktemp("seq-server"), [repo], wait_models=("accum", "accum_str", "accum_py"))
    yield server
    server.stop()


def _input(module: Any, value: float) -> Any:
    tensor = module.InferInput("INPUT", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    return tensor


@pytest.mark.parametrize("model", ["accum", "accum_oldest", "accum_py"])
def test_grpc_sequence_accumulates_with_controls(seq_server: ServerProcess, model: str) -> None:
    client = grpcclient.InferenceServerClient(seq_server.grpc_host)
    sums = []
    for step, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        result = client.infer(
            model, [_input(grpcclient, value)], sequence_id=4242, sequence_start=step == 0, sequence_end=step == 3
        )
        sums.append(float(result.as_numpy("OUTPUT")[0, 0]))
        assert int(result.as_numpy("CORRID_OUT")[0, 0]) == 4242
        assert float(result.as_numpy("END_OUT")[0, 0]) == (1.0 if step == 3 else 0.0)
    assert sums == [1.0, 3.0, 6.0, 10.0]
    # the same id starts afresh after END: state is the initial state again
    result = client.infer(model, [_input(grpcclient, 5.0)], sequence_id=4242, sequence_start=True, sequence_end=True)
    assert float(result.as_numpy("OUTPUT")[0, 0]) == 5.0


def test_http_sequence_with_a_string_id(seq_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(seq_server.http_host)
    first = client.infer("accum_str", [_input(httpclient, 2.0)], sequence_id="user-7", sequence_start=True)
    second = client.infer("accum_str", [_input(httpclient, 5.0)], sequence_id="user-7", sequence_end=True)
    assert float(second.as_numpy("OUTPUT")[0, 0]) == 7.0 and float(first.as_numpy("OUTPUT")[0, 0]) == 2.0
    assert second.as_numpy("CORRID_OUT")[0, 0] == b"user-7"


def test_interleaved_sequences_over_grpc_streaming_stay_in_order(seq_server: ServerProcess) -> None:
    sequences, steps = 24, 12
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(seq_server.grpc_host)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for step in range(steps):
            for seq in range(sequences):
                client.async_stream_infer(
                    "accum",
                    [_input(grpcclient, float(seq * 100 + step))],
                    request_id=f"{seq}:{step}",
                    sequence_id=1000 + seq,
                    sequence_start=step == 0,
                    sequence_end=step == steps - 1,
                )
        answers: dict[int, list[tuple[int, float]]] = {}
        for _ in range(sequences * steps):
            result, error = results.get(timeout=60)
            assert error is None, error
            seq, step = (int(x) for x in result.get_response().id.split(":"))
            assert int(result.as_numpy("CORRID_OUT")[0, 0]) == 1000 + seq
            answers.setdefault(seq, []).append((step, float(result.as_numpy("OUTPUT")[0, 0])))
    finally:
        client.stop_stream()
    for seq, got in answers.items():
        assert [step for step, _ in got] == list(range(steps)), f"sequence {seq} answered out of order"
        expected = np.cumsum([seq * 100 + s for s in range(steps)]).astype(float).tolist()
        assert [value for _, value in got] == expected


def test_errors_are_tritons(seq_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(seq_server.grpc_host)
    with pytest.raises(InferenceServerException, match="must specify a non-zero or non-empty correlation ID"):
        client.infer("accum", [_input(grpcclient, 1.0)])
    with pytest.raises(InferenceServerException, match="for sequence 77 to model 'accum' must specify the START"):
        client.infer("accum", [_input(grpcclient, 1.0)], sequence_id=77)
    client.infer("accum", [_input(grpcclient, 1.0)], sequence_id=78, sequence_start=True, sequence_end=True)
    with pytest.raises(InferenceServerException, match=r"for sequence 78 .* must specify the START") as ended:
        client.infer("accum", [_input(grpcclient, 1.0)], sequence_id=78)
    assert ended.value.status() == "StatusCode.INVALID_ARGUMENT"
    batch = grpcclient.InferInput("INPUT", [2, 1], "FP32")
    batch.set_data_from_numpy(np.ones((2, 1), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="must specify batch-size 1 due to requirements of sequence"):
        client.infer("accum", [batch], sequence_id=79, sequence_start=True)
    http = httpclient.InferenceServerClient(seq_server.http_host)
    with pytest.raises(InferenceServerException, match="CONTROL_SEQUENCE_CORRID 'CORRID' is UINT64"):
        http.infer("accum", [_input(httpclient, 1.0)], sequence_id="text", sequence_start=True)


def test_idle_sequence_is_released(seq_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(seq_server.grpc_host)
    client.infer("accum_idle", [_input(grpcclient, 1.0)], sequence_id=5, sequence_start=True)
    client.infer("accum_idle", [_input(grpcclient, 1.0)], sequence_id=5)
    time.sleep(0.8)
    with pytest.raises(InferenceServerException, match="for sequence 5 to model 'accum_idle' must specify the START"):
        client.infer("accum_idle", [_input(grpcclient, 1.0)], sequence_id=5)


def test_sequences_beyond_the_slots_wait_in_the_backlog(seq_server: ServerProcess) -> None:
    """accum_small has 2 slots (1 instance, max_batch_size 2): a third sequence waits until one ends."""
    client = grpcclient.InferenceServerClient(seq_server.grpc_host)
    for sid in (1, 2):
        client.infer("accum_small", [_input(grpcclient, 1.0)], sequence_id=sid, sequence_start=True)
    done: list[float] = []

    def third() -> None:
        other = grpcclient.InferenceServerClient(seq_server.grpc_host)
        result = other.infer("accum_small", [_input(grpcclient, 9.0)], sequence_id=3, sequence_start=True)
        done.append(float(result.as_numpy("OUTPUT")[0, 0]))

    waiter = threading.Thread(target=third)
    waiter.start()
    time.sleep(0.5)
    assert done == []  # no free slot yet
    client.infer("accum_small", [_input(grpcclient, 1.0)], sequence_id=1, sequence_end=True)
    waiter.join(30)
    assert done == [9.0]
    result = client.infer("accum_small", [_input(grpcclient, 1.0)], sequence_id=2, sequence_end=True)
    assert float(result.as_numpy("OUTPUT")[0, 0]) == 2.0
    client.infer("accum_small", [_input(grpcclient, 1.0)], sequence_id=3, sequence_end=True)


def test_config_and_stats_show_the_sequence_model(seq_server: ServerProcess, tmp_path: Path) -> None:
    client = httpclient.InferenceServerClient(seq_server.http_host)
    config = client.get_model_config("accum")
    assert [t["name"] for t in config["input"]] == ["INPUT"]  # controls and state are the server's
    assert "sequence_batching" in config
    stats = client.get_inference_statistics("accum")["model_stats"][0]
    assert stats["inference_count"] > 0


def test_oldest_waits_up_to_its_queue_delay_for_a_fuller_batch(seq_server: ServerProcess) -> None:
    """accum_delay: oldest, max_queue_delay_microseconds 500000: four sequences' first requests sent
    together on one stream run as one batch of four."""
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(seq_server.grpc_host)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for seq in range(4):
            client.async_stream_infer(
                "accum_delay", [_input(grpcclient, float(seq))], sequence_id=300 + seq, sequence_start=True,
                sequence_end=True,
            )  # fmt: skip
        for _ in range(4):
            _, error = results.get(timeout=30)
            assert error is None, error
    finally:
        client.stop_stream()
    stats = httpclient.InferenceServerClient(seq_server.http_host).get_inference_statistics("accum_delay")
    entry = stats["model_stats"][0]
    assert entry["execution_count"] == 1
    assert [b["batch_size"] for b in entry["batch_stats"]] == [4]
