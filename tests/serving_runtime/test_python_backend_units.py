"""The Python backend's pieces without a server: pb_utils, auto-complete rules, shared memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from shipyard.serving_runtime.backends.python import batch_codec, pb_utils
from shipyard.serving_runtime.backends.python.shm import SlabPool, SlabReader

if TYPE_CHECKING:
    from shipyard.serving_runtime.backends.python.instance import PythonInstance


def test_tensors_round_trip_through_shared_memory(tmp_path: object) -> None:
    pool, reader = SlabPool("unit", str(tmp_path)), SlabReader(str(tmp_path))
    try:
        tensors = [
            ("f", np.arange(12, dtype=np.float32).reshape(3, 4)),
            ("b", np.array([[b"ab", b""], [b"xyz", b"\x00"]], dtype=np.object_)),
            ("t", np.array([True, False])),
            ("empty", np.zeros((0, 3), np.float16)),
            ("scalar", np.array(5, np.int64)),
            ("transposed", np.arange(6, dtype=np.uint16).reshape(2, 3).T),
        ]
        refs = pool.write(tensors)
        back = reader.read(refs)
        for (name, array), (name_back, _, array_back) in zip(tensors, back, strict=True):
            assert name == name_back and array_back.shape == array.shape and array_back.dtype == array.dtype
            np.testing.assert_array_equal(array_back, array)
        assert pool.write(tensors)[0][3] == refs[0][3]  # read frees the slab for reuse
    finally:
        pool.close()
        reader.close()


def test_a_batch_stacks_its_tensors_when_they_stack(tmp_path: object) -> None:
    """Requests with the same tensors cross as one stacked tensor per name; anything else (BYTES,
    other shapes or names) tensor by tensor; either way each item gets its own arrays back."""
    pool, reader = SlabPool("batch", str(tmp_path)), SlabReader(str(tmp_path))
    rng = np.random.default_rng(1)

    def item(rows: int, width: int = 4) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((rows, width)).astype(np.float32), "n": np.arange(rows, dtype=np.int64)}

    stacking = [item(1), item(3), item(2)]
    batches = {
        "rows": stacking,
        "each": [item(1), item(1, width=5)],
        "bytes": [{"s": np.array([b"a", b"bc"], np.object_)}, {"s": np.array([b"d"], np.object_)}],
        "names": [item(1), {"x": item(1)["x"]}],
    }
    try:
        for kind, items in batches.items():
            encoded = batch_codec.encode(pool, items)
            assert encoded[0] == ("rows" if kind == "rows" else "each"), kind
            if kind == "rows":
                assert len(encoded[1]) == 2 and encoded[2] == [1, 3, 2]  # one descriptor per name
            back = batch_codec.decode(reader, encoded)
            assert len(back) == len(items)
            for sent, got in zip(items, back, strict=True):
                assert sorted(sent) == sorted(name for name, _, _ in got), kind
                for name, _, array in got:
                    assert array.dtype == sent[name].dtype and array.shape == sent[name].shape
                    np.testing.assert_array_equal(array, sent[name])
    finally:
        pool.close()
        reader.close()


def test_full_shared_memory_is_a_clear_error(tmp_path: object) -> None:
    # a file-size limit makes posix_fallocate fail the way a full /dev/shm does
    code = textwrap.dedent(f"""
        import resource, numpy as np
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from shipyard.serving_runtime.backends.python.shm import SlabPool, ShmError
        try:
            SlabPool("big", {str(tmp_path)!r}).write([("x", np.zeros(1 << 20, np.float32))])
        except ShmError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "shared memory is full: cannot reserve 8.0 MiB" in out and "--shm-size" in out


def test_pb_utils_api() -> None:
    tensor = pb_utils.Tensor("x", np.ones(3, np.float32))
    assert tensor.name() == "x" and tensor.is_cpu() and tensor.triton_dtype() == 11
    copy = pb_utils.Tensor.from_dlpack("y", tensor.to_dlpack())
    np.testing.assert_array_equal(copy.as_numpy(), tensor.as_numpy())
    response = pb_utils.InferenceResponse([tensor], parameters={"k": 1})
    assert pb_utils.get_output_tensor_by_name(response, "x") is tensor and response.parameters() == '{"k": 1}'
    error = pb_utils.TritonError("nope", pb_utils.TritonError.NOT_FOUND)
    assert pb_utils.InferenceResponse(error=error).has_error() and error.code() == 2
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    with pytest.raises(pb_utils.TritonModelException, match="not supported by shipyard's Python backend"):
        pb_utils.MetricFamily  # noqa: B018
    with pytest.raises(pb_utils.TritonModelException, match="only available inside a Python model"):
        pb_utils.InferenceRequest(model_name="m", inputs=[tensor]).exec()
    with pytest.raises(pb_utils.TritonModelException, match="must be a list"):
        pb_utils.InferenceResponse(tensor)  # type: ignore[arg-type]


def test_auto_complete_rules() -> None:
    config = pb_utils.ModelConfig('{"name": "m", "max_batch_size": 8, "input": [], "output": []}')
    config.add_input({"name": "a", "data_type": "TYPE_FP32", "dims": [2]})
    config.set_dynamic_batching()
    assert config.as_dict()["input"][0]["name"] == "a" and "dynamic_batching" in config.as_dict()
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8"):
        config.set_max_batch_size(4)
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32 for input 'a'"):
        config.add_input({"name": "a", "data_type": "TYPE_INT32", "dims": [2]})
    with pytest.raises(ValueError, match="missing 'dims'"):
        config.add_output({"name": "b", "data_type": "TYPE_FP32"})


def test_instance_that_cannot_restart_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    import json
    import time

    from shipyard.serving_runtime.backends.python.instance import RESTART_RETRY_S, PythonInstance
    from shipyard.serving_runtime.errors import ServingError
    from shipyard.serving_runtime.scheduling.api import InferenceRequest

    broken = tmp_path / "broken"
    model = tmp_path / "1" / "model.py"
    model.parent.mkdir()
    model.write_text(
        textwrap.dedent(f"""
        import os
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                if os.path.exists({str(broken)!r}):
                    raise RuntimeError("the model's weights are gone")

            def execute(self, requests):
                os._exit(1)
        """)
    )
    args = {
        "model_config": json.dumps({"name": "m"}), "model_instance_kind": "CPU", "model_instance_name": "m_0",
        "model_instance_device_id": "0", "model_repository": str(tmp_path), "model_version": "1", "model_name": "m",
    }  # fmt: skip
    instance = PythonInstance(model, args, {}, ["y"])
    try:
        request = InferenceRequest({"x": np.ones(2, np.float32)})
        broken.touch()
        (crashed,) = instance.execute_requests([request])
        assert isinstance(crashed, ServingError) and "ended with exit code 1" in crashed.message
        time.sleep(RESTART_RETRY_S + 0.5)
        (refused,) = instance.execute_requests([request])
        assert isinstance(refused, ServingError)
        assert "instance m_0 of model 'm' is unavailable" in refused.message
        assert "RuntimeError: the model's weights are gone" in refused.message
    finally:
        instance.close()


def test_stub_has_its_own_process_group_in_the_servers_session(tmp_path: Path) -> None:
    """Ctrl-C in the terminal (the foreground process group) reaches the server, not the model's
    process; but the process stays in the server's session, so autogroup scheduling keeps it in the
    server's CPU group (a session of its own waited about twice as long for a CPU under load)."""
    import json
    import os

    from shipyard.serving_runtime.backends.python.instance import PythonInstance

    model = tmp_path / "1" / "model.py"
    model.parent.mkdir()
    model.write_text("class TritonPythonModel:\n    def execute(self, requests):\n        return []\n")
    args = {
        "model_config": json.dumps({"name": "m"}), "model_instance_kind": "CPU", "model_instance_name": "m_0",
        "model_instance_device_id": "0", "model_repository": str(tmp_path), "model_version": "1", "model_name": "m",
    }  # fmt: skip
    instance = PythonInstance(model, args, {}, ["y"])
    try:
        pid = instance.stub.pid
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert os.getsid(pid) == os.getsid(0)
    finally:
        instance.close()


ECHO_MODEL = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if float(x.reshape(-1)[0]) < 0:
                os._exit(4)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)]))
        return out
"""


def _echo_instance(tmp_path: Path) -> PythonInstance:
    """A PythonInstance of ``ECHO_MODEL`` (max_batch_size 8, output ``y``) in ``tmp_path``."""
    from server_harness import python_instance

    instance: PythonInstance = python_instance(tmp_path, "echo", ECHO_MODEL)
    return instance


@pytest.mark.parametrize("loop_calls", [False, True])
def test_batches_reach_the_process_and_survive_a_restart(tmp_path: Path, loop_calls: bool) -> None:
    """The dynamic batcher hands a Python model's batches to its process through the instance's
    worker thread (SHIPYARD_PYTHON_LOOP_CALL=0), or (=1) from the event loop with no thread on the way;
    either way a dead process fails only its batch, and while it restarts the worker thread runs
    the next one, which waits for initialize."""
    import asyncio
    import threading

    from shipyard.serving_runtime.errors import BackendError
    from shipyard.serving_runtime.scheduling.api import InferenceRequest
    from shipyard.serving_runtime.scheduling.batching import BatchingSettings
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    instance = _echo_instance(tmp_path)
    instance.loop_calls, instance.loop_lone = loop_calls, False
    on_threads: list[str] = []
    through_thread = instance.execute_requests

    def counted(requests: list[InferenceRequest]) -> list[object]:
        on_threads.append(threading.current_thread().name)
        return through_thread(requests)

    instance.execute_requests = counted  # type: ignore[method-assign]
    batcher = DynamicBatcher([instance], "echo", 1, BatchingSettings(max_batch_size=8))

    def request(value: float) -> InferenceRequest:
        return InferenceRequest({"x": np.full((1, 3), value, np.float32)})

    async def main() -> None:
        results = await asyncio.gather(*(batcher.submit(request(i)) for i in range(20)))
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * i, np.float32))
        if loop_calls:
            assert on_threads == []  # every batch went from the loop to the process and back
        else:
            assert on_threads and all(name.startswith("echo-v1-i0") for name in on_threads)
        with pytest.raises(BackendError, match="ended with exit code 4; it is being restarted"):
            await batcher.submit(request(-1))
        again = await batcher.submit(request(5))
        np.testing.assert_array_equal(again["y"], np.full((1, 3), 10, np.float32))
        await batcher.drain()

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    assert instance.restarts == 1


def test_lone_requests_skip_the_worker_thread_and_bursts_still_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SHIPYARD_PYTHON_LOOP_CALL=auto (the default of sessions 11-15) requests sent one after another go from
    the event loop to the process (no worker thread on the way); a burst still reaches ``execute``
    as the batcher's batches, through the worker thread, and so does a lone request while another
    is pending anywhere in the process. Every answer is the model's, and an idle process uses no
    CPU (it blocks)."""
    import asyncio
    import os
    import threading
    import time

    from shipyard.serving_runtime.scheduling.api import InferenceRequest
    from shipyard.serving_runtime.scheduling.batching import BatchingSettings
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    monkeypatch.setenv("SHIPYARD_PYTHON_LOOP_CALL", "auto")
    monkeypatch.setattr(DynamicBatcher, "process_pending", 0)  # whatever other tests left behind
    instance = _echo_instance(tmp_path)
    assert instance.loop_lone and not instance.loop_calls
    worker_batches: list[int] = []
    through_thread = instance.execute_requests

    def counted(requests: list[InferenceRequest]) -> list[object]:
        assert threading.current_thread() is not threading.main_thread()
        worker_batches.append(len(requests))
        return through_thread(requests)

    instance.execute_requests = counted  # type: ignore[method-assign]
    batcher = DynamicBatcher([instance], "echo", 1, BatchingSettings(max_batch_size=8))

    async def one(value: float) -> None:
        result = await batcher.submit(InferenceRequest({"x": np.full((1, 3), value, np.float32)}))
        np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * value, np.float32))

    async def main() -> None:
        for i in range(5):
            await one(i)
        assert worker_batches == []  # one after another: every call went from the loop
        await asyncio.gather(*(one(i) for i in range(20)))
        assert sum(worker_batches) == 20 and max(worker_batches) > 1  # a burst: batches, on the worker
        worker_batches.clear()
        for i in range(3):
            await one(i)
        assert worker_batches == []  # alone again: the loop
        DynamicBatcher.process_pending += 1  # as if another model of the process had a request in flight
        try:
            await one(7)
        finally:
            DynamicBatcher.process_pending -= 1
        assert worker_batches == [1]  # not alone in the process: the worker
        await batcher.drain()

    def cpu_s() -> float:
        fields = Path(f"/proc/{instance.stub.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        asyncio.run(main())
        time.sleep(0.3)  # let the last answer's clean-up (frees, garbage collection) finish
        before = cpu_s()
        time.sleep(1.0)
        # idle: blocked in recv. A polling process would burn about a second here; ticks are sampled
        # (10 ms each), so a loaded machine can charge a blocked process a few.
        assert cpu_s() - before < 0.15
    finally:
        batcher.close()


def test_a_bad_loop_call_setting_is_named_and_runs_as_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shipyard.serving_runtime.backends.python.instance import loop_call_mode

    monkeypatch.setenv("SHIPYARD_PYTHON_LOOP_CALL", "single")
    assert loop_call_mode() == "0"
    assert "SHIPYARD_PYTHON_LOOP_CALL='single' is not one of auto, 0, 1; using 0" in caplog.text
    monkeypatch.setenv("SHIPYARD_PYTHON_LOOP_CALL", "auto")
    assert loop_call_mode() == "auto"
    monkeypatch.delenv("SHIPYARD_PYTHON_LOOP_CALL")
    assert loop_call_mode() == "0"  # by default every batch goes through the instance's thread


def test_in_auto_mode_a_lone_request_goes_from_the_loop_and_a_batch_through_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SHIPYARD_PYTHON_LOOP_CALL=auto a batch of one request sent alone goes from the event loop to the process
    (no worker thread on the way), and a burst reaches the instance's thread only as batches of several."""
    import asyncio
    import threading

    from shipyard.serving_runtime.scheduling.api import InferenceRequest
    from shipyard.serving_runtime.scheduling.batching import BatchingSettings
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    monkeypatch.setenv("SHIPYARD_PYTHON_LOOP_CALL", "auto")
    monkeypatch.setattr(DynamicBatcher, "process_pending", 0)  # whatever other tests left behind
    instance = _echo_instance(tmp_path)
    sizes_on_thread: list[int] = []
    through_thread = instance.execute_requests

    def counted(requests: list[InferenceRequest]) -> list[object]:
        assert threading.current_thread() is not threading.main_thread()
        sizes_on_thread.append(len(requests))
        return through_thread(requests)

    instance.execute_requests = counted  # type: ignore[method-assign]
    batcher = DynamicBatcher([instance], "echo", 1, BatchingSettings(max_batch_size=8))

    def request(value: float) -> InferenceRequest:
        return InferenceRequest({"x": np.full((1, 3), value, np.float32)})

    async def main() -> None:
        for value in range(3):  # one at a time: batches of one, from the loop
            result = await batcher.submit(request(value))
            np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * value, np.float32))
        assert sizes_on_thread == []
        results = await asyncio.gather(*(batcher.submit(request(i)) for i in range(8)))
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * i, np.float32))
        assert sizes_on_thread and all(size > 1 for size in sizes_on_thread)
        await batcher.drain()

    try:
        asyncio.run(main())
    finally:
        batcher.close()
