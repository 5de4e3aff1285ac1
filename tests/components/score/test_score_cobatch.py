"""Co-batching against a real serving runtime (serving_runtime/scheduling/cobatch.py): ``shipyard score`` next
to a real-time gRPC client on a small MLP whose background level tops real-time batches up with the job's rows.

- the job's predictions with real-time traffic equal, bit for bit and by key, those of the job alone
  (in-process: the ONNX Runtime session with nothing around it), while rows rode along in real-time batches;
- no batch held a whole batch-job request while real-time traffic ran: a real-time request waited behind
  ``background_fill_rows`` rows at most (the server's batch statistics);
- the model unloaded in the middle of the job: its requests are refused UNAVAILABLE, the scorer backs off, and
  once the model is loaded again the same run completes with every row once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from score_harness import Runtime, start_runtime, write_model
from test_score_library import read_output, write_input

from shipyard.components.score import score

WIDTH, HIDDEN, CLASSES = 16, 256, 8
FILL, SLICE, JOB_BATCH = 8, 4, 32
MLP_CONFIG = f"""
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ priority_levels: 2 default_priority_level: 1 }}
parameters {{ key: "background_slice_rows" value: {{ string_value: "{SLICE}" }} }}
parameters {{ key: "background_fill_rows" value: {{ string_value: "{FILL}" }} }}
parameters {{ key: "background_share_rows" value: {{ string_value: "0" }} }}
parameters {{ key: "background_recent_us" value: {{ string_value: "60000000" }} }}
"""


def mlp_onnx() -> bytes:
    """x [B, 16] -> MatMul 256, Relu, MatMul 256, Relu, MatMul 8: fixed random weights."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(7)
    shapes = [(WIDTH, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)]
    weights = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32), f"w{i}")
               for i, s in enumerate(shapes)]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["r0"]),
        helper.make_node("MatMul", ["r0", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], initializer=weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def mlp_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("cobatch-repo")
    write_model(repo, "mlp", mlp_onnx(), MLP_CONFIG)
    return repo


@pytest.fixture(scope="module")
def served(mlp_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = start_runtime(mlp_repository, tmp_path_factory.mktemp("cobatch") / "server.log",
                            "--model-control-mode", "explicit", "--load-model", "mlp")  # fmt: skip
    yield runtime
    runtime.process.terminate()
    runtime.process.wait(20)


class RealTime:
    """``clients`` threads sending single-row requests at the default priority (real-time) until stopped;
    counts answers and refusals."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url = url
        self.answered = 0
        self.refused = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def _loop(self, seed: int) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.url)
        item = grpcclient.InferInput("x", [1, WIDTH], "FP32")
        item.set_data_from_numpy(np.random.default_rng(seed).standard_normal((1, WIDTH)).astype(np.float32))
        while not self._stop.is_set():
            try:
                client.infer("mlp", [item])
                self.answered += 1
            except InferenceServerException:
                self.refused += 1  # the model is unloaded for a moment (one test does that)
                time.sleep(0.01)
        client.close()

    def __enter__(self) -> RealTime:
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 30
        while self.answered < 10:  # under way: real-time work is recent on the server
            assert time.monotonic() < deadline, "the real-time client got no answers"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def batch_sizes(url: str) -> dict[int, int]:
    """Executions per batch size so far (the server's statistics, Triton's ``batch_stats``)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    client.close()
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}


def _job(tmp_path: Path, rows: int) -> tuple[Path, np.ndarray, np.ndarray]:
    x = np.random.default_rng(3).standard_normal((rows, WIDTH)).astype(np.float32)
    keys = np.random.default_rng(4).permutation(rows * 3)[:rows].astype(np.int64)
    return write_input("parquet", tmp_path / "in.parquet", x, keys), x, keys


def _by_key(out: Path) -> dict[int, bytes]:
    table = read_output(str(out))
    logits = np.asarray(table.column("logits").to_pylist(), dtype=np.float32)
    return {int(k): row.tobytes() for k, row in zip(table.column("id").to_pylist(), logits, strict=True)}


def test_co_batched_job_equals_the_job_alone_bit_for_bit(tmp_path: Path, mlp_repository: Path, served: Runtime) -> None:
    source, _, keys = _job(tmp_path, 2000)
    score(str(source), str(tmp_path / "alone"), "mlp", repository=str(mlp_repository), key="id",
          batch_size=JOB_BATCH, show_progress=False)  # fmt: skip
    before = batch_sizes(served.grpc_url)
    with RealTime(served.grpc_url) as realtime:
        summary = score(str(source), str(tmp_path / "mixed"), "mlp", url=served.grpc_url, key="id",
                        batch_size=JOB_BATCH, part_rows=256, show_progress=False)  # fmt: skip
    after = batch_sizes(served.grpc_url)
    assert summary["rows"] == 2000 and summary["priority"] == 2 and realtime.refused == 0
    alone, mixed = _by_key(tmp_path / "alone"), _by_key(tmp_path / "mixed")
    assert sorted(mixed) == sorted(int(k) for k in keys) == sorted(alone)
    differing = [k for k in alone if alone[k] != mixed[k]]
    assert not differing, f"{len(differing)} of 2000 rows differ from the job alone, e.g. key {differing[0]}"
    ran = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    # with 2 real-time clients a real-time batch holds 1-2 rows and a slice 4: 5-8 rows means rows rode along
    assert sum(count for size, count in ran.items() if SLICE < size <= FILL) > 0, ran
    # and no batch held a whole 32-row job request: a real-time request waited behind 8 rows at most
    assert max(size for size, count in ran.items() if count) <= FILL, ran


def test_unloading_mid_job_refuses_cleanly_and_the_job_completes(tmp_path: Path, served: Runtime) -> None:
    import tritonclient.grpc as grpcclient

    source, _, keys = _job(tmp_path, 3000)
    outcome: dict[str, object] = {}

    def run_job() -> None:
        try:
            outcome["summary"] = score(str(source), str(tmp_path / "out"), "mlp", url=served.grpc_url, key="id",
                                       batch_size=JOB_BATCH, part_rows=256, show_progress=False)  # fmt: skip
        except Exception as exc:  # the assertion below names it
            outcome["error"] = exc

    control = grpcclient.InferenceServerClient(served.grpc_url)
    with RealTime(served.grpc_url) as realtime:
        job = threading.Thread(target=run_job, daemon=True)
        job.start()
        deadline = time.monotonic() + 60
        while not list((tmp_path / "out").glob("part-*.parquet")):  # under way: a part is written
            assert time.monotonic() < deadline and job.is_alive(), outcome
            time.sleep(0.005)
        mid_job = job.is_alive()
        control.unload_model("mlp")
        time.sleep(0.3)
        control.load_model("mlp")
        job.join(120)
    control.close()
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert isinstance(summary, dict) and summary["rows"] == 3000
    assert summary["retries"] > 0  # the job's requests were refused while the model was away, then sent again
    assert mid_job and realtime.answered > 10
    table = read_output(str(tmp_path / "out"))
    written = table.column("id").to_pylist()
    assert len(written) == len(set(written)) == 3000 and set(written) == {int(k) for k in keys}
