"""System shared memory (Triton's extension) against a real server, driven by tritonclient's http and
grpc clients and ``tritonclient.utils.shared_memory`` unchanged: register, status, unregister,
inputs read from and outputs written to regions, and the errors Triton names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from server_harness import ServerProcess
from tritonclient.utils import InferenceServerException

from shipyard.serving_runtime.protocol.shared_memory import SharedMemoryRegistry
from shipyard.serving_runtime.protocol.types import DecodedInput, DecodedRequest, EncodedOutput, RequestedOutput, ShmRef

pytestmark = pytest.mark.timeout(120)

A = np.arange(16, dtype=np.float32).reshape(1, 16)
B = np.full((1, 16), 2.0, dtype=np.float32)
NBYTES = A.nbytes


@pytest.fixture
def regions() -> Iterator[tuple[Any, Any, str]]:
    """An input region holding A then B, an output region for two outputs, and a unique prefix."""
    prefix = f"shipyard_test_{os.getpid()}_{np.random.randint(1 << 30)}"
    inputs = shm.create_shared_memory_region(f"{prefix}_in", f"/{prefix}_in", 2 * NBYTES)
    outputs = shm.create_shared_memory_region(f"{prefix}_out", f"/{prefix}_out", 2 * NBYTES)
    shm.set_shared_memory_region(inputs, [A, B])
    yield inputs, outputs, prefix
    shm.destroy_shared_memory_region(inputs)
    shm.destroy_shared_memory_region(outputs)


def _client(served: ServerProcess, kind: str) -> Any:
    module = httpclient if kind == "http" else grpcclient
    host = served.http_host if kind == "http" else served.grpc_host
    return module, module.InferenceServerClient(host)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_inputs_and_outputs_in_shared_memory(served: ServerProcess, regions: Any, kind: str) -> None:
    _, out_handle, prefix = regions
    module, client = _client(served, kind)
    client.register_system_shared_memory(f"{prefix}_in", f"/{prefix}_in", 2 * NBYTES)
    client.register_system_shared_memory(f"{prefix}_out", f"/{prefix}_out", 2 * NBYTES)
    try:
        status = client.get_system_shared_memory_status()
        names = [r["name"] for r in status] if kind == "http" else list(status.regions)
        assert {f"{prefix}_in", f"{prefix}_out"} <= set(names)
        inputs = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
        inputs[0].set_shared_memory(f"{prefix}_in", NBYTES)
        inputs[1].set_shared_memory(f"{prefix}_in", NBYTES, offset=NBYTES)
        outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory(f"{prefix}_out", NBYTES)
        outputs[1].set_shared_memory(f"{prefix}_out", NBYTES, offset=NBYTES)
        result = client.infer("simple", inputs, model_version="1", outputs=outputs)
        out0 = result.get_output("OUTPUT0")
        params = out0["parameters"] if kind == "http" else out0.parameters
        region = params["shared_memory_region"] if kind == "http" else params["shared_memory_region"].string_param
        assert region == f"{prefix}_out"
        np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), A + B)
        np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16], offset=NBYTES), A - B)
        # one input in shared memory, the other sent inline; output inline
        inline = module.InferInput("INPUT1", [1, 16], "FP32")
        inline.set_data_from_numpy(B)
        result = client.infer("simple", [inputs[0], inline], model_version="1")
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), A + B)
    finally:
        client.unregister_system_shared_memory(f"{prefix}_in")
        client.unregister_system_shared_memory(f"{prefix}_out")
    status = client.get_system_shared_memory_status()
    names = [r["name"] for r in status] if kind == "http" else list(status.regions)
    assert f"{prefix}_in" not in names


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_errors_name_the_region(served: ServerProcess, regions: Any, kind: str) -> None:
    _, _, prefix = regions
    module, client = _client(served, kind)
    name = f"{prefix}_in"
    with pytest.raises(InferenceServerException, match="Unable to open shared memory region: '/no_such_key_x'"):
        client.register_system_shared_memory("nokey", "/no_such_key_x", 16)
    with pytest.raises(InferenceServerException, match=f"failed to register shared memory region '{name}': invalid"):
        client.register_system_shared_memory(name, f"/{prefix}_in", 2 * NBYTES + 1)
    client.register_system_shared_memory(name, f"/{prefix}_in", 2 * NBYTES)
    try:
        with pytest.raises(InferenceServerException, match=f"shared memory region '{name}' already in manager"):
            client.register_system_shared_memory(name, f"/{prefix}_in", NBYTES)
        with pytest.raises(InferenceServerException, match="Unable to find system shared memory region: 'nope'"):
            client.get_system_shared_memory_status("nope")

        def infer(region: str, size: int, offset: int) -> None:
            tensors = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
            for tensor in tensors:
                tensor.set_shared_memory(region, size, offset=offset)
            client.infer("simple", tensors)

        with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'nope'"):
            infer("nope", NBYTES, 0)
        with pytest.raises(InferenceServerException, match=f"Invalid offset for shared memory region: '{name}'"):
            infer(name, NBYTES, 2 * NBYTES)
        with pytest.raises(InferenceServerException, match=f"Invalid offset \\+ byte size .*'{name}'"):
            infer(name, NBYTES, NBYTES + 4)
        with pytest.raises(InferenceServerException, match="unexpected total byte size 32"):
            infer(name, 32, 0)
        tensors = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
        for tensor in tensors:
            tensor.set_shared_memory(name, NBYTES)
        small = module.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory(name, 8)
        with pytest.raises(InferenceServerException, match="should be at least 64 bytes"):
            client.infer("simple", tensors, outputs=[small])
        with pytest.raises(InferenceServerException, match="GPUs not supported"):
            client.register_cuda_shared_memory("gpu", b"AAAA" if kind == "grpc" else "AAAA", 0, 16)
    finally:
        client.unregister_system_shared_memory()
    assert client.is_server_live()


def test_unregister_while_a_request_holds_the_region(regions: Any) -> None:
    """A bound request keeps its mapping after the region is unregistered: its output still lands,
    and a new request no longer finds the region."""
    _, out_handle, prefix = regions
    registry = SharedMemoryRegistry()
    registry.register("out", f"/{prefix}_out", 0, 2 * NBYTES)
    registry.register("in", f"/{prefix}_in", 0, 2 * NBYTES)
    request = DecodedRequest(
        inputs=[DecodedInput("INPUT0", "FP32", (1, 16), np.empty(0), ShmRef("in", NBYTES, 0))],
        outputs=[RequestedOutput("OUTPUT0", shm=ShmRef("out", NBYTES, NBYTES))],
    )
    binding = registry.bind(request)
    assert binding is not None
    np.testing.assert_array_equal(request.inputs[0].data, A)
    assert not request.inputs[0].data.flags.writeable
    registry.unregister()
    assert registry.status() == []
    written = binding.write([EncodedOutput("OUTPUT0", "FP32", (1, 16), A * 3)])
    assert written[0].shm == ShmRef("out", NBYTES, NBYTES)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16], offset=NBYTES), A * 3)
    with pytest.raises(Exception, match="Unable to find shared memory region: 'in'"):
        registry.bind(request)


def test_unregister_while_a_request_is_queued_on_a_real_server(tmp_path: Path) -> None:
    """A request that bound its regions finishes after they are unregistered: its output lands."""
    import threading
    import urllib.request

    from server_harness import SLOW_CONFIG, slow_onnx, start_server, write_model

    repo = tmp_path / "repo"
    write_model(repo, "slow", {1: slow_onnx()}, SLOW_CONFIG)
    server = start_server(tmp_path, [repo], wait_models=("slow",))
    x = np.random.default_rng(0).random((16, 512), dtype=np.float32)
    key = f"shipyard_inflight_{os.getpid()}"
    in_handle = shm.create_shared_memory_region("in", f"/{key}_in", x.nbytes)
    out_handle = shm.create_shared_memory_region("out", f"/{key}_out", x.nbytes)
    shm.set_shared_memory_region(in_handle, [x])
    outcomes: dict[str, Any] = {}
    try:
        control = grpcclient.InferenceServerClient(server.grpc_host)
        control.register_system_shared_memory("in", f"/{key}_in", x.nbytes)
        control.register_system_shared_memory("out", f"/{key}_out", x.nbytes)

        def blocker() -> None:  # occupies the one instance (a full batch of 64: long enough on a quiet machine)
            tensor = grpcclient.InferInput("x", [64, 512], "FP32")
            tensor.set_data_from_numpy(np.concatenate([x] * 4))
            outcomes["inline"] = grpcclient.InferenceServerClient(server.grpc_host).infer("slow", [tensor])

        def shared() -> None:
            tensor = grpcclient.InferInput("x", [16, 512], "FP32")
            tensor.set_shared_memory("in", x.nbytes)
            output = grpcclient.InferRequestedOutput("y")
            output.set_shared_memory("out", x.nbytes)
            try:
                outcomes["shm"] = grpcclient.InferenceServerClient(server.grpc_host).infer(
                    "slow", [tensor], outputs=[output]
                )
            except InferenceServerException as exc:
                outcomes["shm"] = exc

        threads = [threading.Thread(target=blocker)]
        threads[0].start()
        pending = 'nv_inference_pending_request_count{model="slow",version="1"}'

        def count() -> float:
            with urllib.request.urlopen(server.http_url + "/metrics", timeout=5) as response:
                line = next(x for x in response.read().decode().splitlines() if x.startswith(pending))
            return float(line.split()[-1])

        server.wait_until(lambda: count() >= 1, 30, "the blocking request in flight")
        threads.append(threading.Thread(target=shared))
        threads[1].start()
        server.wait_until(lambda: count() >= 2, 30, "the shared-memory request queued")
        control.unregister_system_shared_memory()
        assert list(control.get_system_shared_memory_status().regions) == []
        for thread in threads:
            thread.join(120)
        assert not isinstance(outcomes["shm"], Exception), outcomes["shm"]
        expected = outcomes["inline"].as_numpy("y")[:16]
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [16, 512]), expected)
    finally:
        server.stop()
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)
