"""Differential cases for sequences, the response cache and system shared memory: the same requests
to the real Triton 2.51 and to shipyard, and what tritonclient sees compared (outputs bit for bit,
statuses, shared-memory status, cache statistics and metrics). Error messages are not compared.
"""

from __future__ import annotations

import os
import queue
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from conformance_servers import require_triton, start_shipyard
from stateful_repo import build_stateful_repository
from tritonclient.utils import InferenceServerException

from benchmarks.servers.triton import find_triton, start_triton

pytestmark = pytest.mark.timeout(300)

CACHE_ARGS = ("--cache-config", "local,size=1048576")


@dataclass
class Server:
    name: str
    http: Any
    grpc: Any
    metrics_url: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """(triton, shipyard) over the stateful repository, both with a 1 MiB response cache."""
    require_triton()
    root = tmp_path_factory.mktemp("stateful")
    logs = tmp_path_factory.mktemp("stateful-logs")
    caches = f"--cache-directory={find_triton().backends.parent / 'caches'}"  # the wheel's local cache
    triton = start_triton(
        [build_stateful_repository(root / "python", True)], logs / "triton.log", (*CACHE_ARGS, caches)
    )
    try:
        shipyard = start_shipyard(build_stateful_repository(root / "onnx", False), logs / "shipyard.log", *CACHE_ARGS)
    except BaseException:
        triton.stop()
        raise
    servers = []
    for name, http_port, grpc_port, metrics_port in (
        ("triton", triton.http_port, triton.grpc_port, triton.metrics_port),
        ("shipyard", shipyard.http_port, shipyard.grpc_port, shipyard.http_port),
    ):
        servers.append(
            Server(
                name,
                httpclient.InferenceServerClient(f"127.0.0.1:{http_port}"),
                grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}"),
                f"http://127.0.0.1:{metrics_port}/metrics",
            )
        )
    try:
        yield servers[0], servers[1]
    finally:
        shipyard.process.stop()
        triton.stop()


# Outcomes where shipyard answers differently on purpose (docs/triton-compatibility.md):
# (Triton's, shipyard's). Registering a key that does not exist or a window outside the object is
# the client's error: 400 / INVALID_ARGUMENT (Triton 2.51: 500 / INTERNAL; newer Tritons answer
# INVALID_ARG for the window).
DELIBERATE = {
    ("error", "500"): ("error", "400"),
    ("error", "StatusCode.INTERNAL"): ("error", "StatusCode.INVALID_ARGUMENT"),
}


def _both(pair: tuple[Server, Server], scenario: Callable[[Server], Any]) -> Any:
    triton, shipyard = (scenario(server) for server in pair)
    assert shipyard == triton, f"triton: {triton}\nshipyard: {shipyard}"
    return triton


def _expected(outcome: Any) -> Any:
    return DELIBERATE.get(outcome, outcome) if isinstance(outcome, tuple) else outcome


def _status(call: Callable[[], Any]) -> Any:
    """The call's result, or its error's status (HTTP code or gRPC code name)."""
    try:
        return call()
    except InferenceServerException as exc:
        return ("error", str(exc.status()))


def _value(module: Any, value: float, batch: int = 1) -> Any:
    tensor = module.InferInput("INPUT", [batch, 1], "FP32")
    tensor.set_data_from_numpy(np.full((batch, 1), value, dtype=np.float32))
    return tensor


def _sequence_result(result: Any) -> tuple[float, float, int]:
    return (
        float(result.as_numpy("OUTPUT")[0, 0]),
        float(result.as_numpy("END_OUT")[0, 0]),
        int(result.as_numpy("CORRID_OUT")[0, 0]),
    )


# -- sequences ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["accum", "accum_oldest"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_interleaved_sequences(pair: tuple[Server, Server], protocol: str, model: str) -> None:
    module = httpclient if protocol == "http" else grpcclient

    def scenario(server: Server) -> list[Any]:
        client = server.http if protocol == "http" else server.grpc
        answers = []
        for step in range(4):
            for seq in (11, 12, 13):
                result = client.infer(
                    model,
                    [_value(module, seq + step * 0.5)],
                    sequence_id=seq,
                    sequence_start=step == 0,
                    sequence_end=step == 3,
                )
                answers.append(_sequence_result(result))
        return answers

    _both(pair, scenario)


def test_sequence_errors(pair: tuple[Server, Server]) -> None:
    def scenario(server: Server) -> list[Any]:
        outcomes = []
        for client, module in ((server.http, httpclient), (server.grpc, grpcclient)):
            outcomes.append(_status(lambda c=client, m=module: c.infer("accum", [_value(m, 1.0)])))  # no id
            outcomes.append(_status(lambda c=client, m=module: c.infer("accum", [_value(m, 1.0)], sequence_id=901)))
            outcomes.append(
                _status(
                    lambda c=client, m=module: _sequence_result(
                        c.infer("accum", [_value(m, 1.0)], sequence_id=902, sequence_start=True, sequence_end=True)
                    )
                )
            )
            outcomes.append(_status(lambda c=client, m=module: c.infer("accum", [_value(m, 1.0)], sequence_id=902)))
            outcomes.append(
                _status(
                    lambda c=client, m=module: c.infer(
                        "accum", [_value(m, 1.0, batch=2)], sequence_id=903, sequence_start=True
                    )
                )
            )
        return outcomes

    outcomes = _both(pair, scenario)
    assert outcomes[0] == ("error", "400") and outcomes[5] == ("error", "StatusCode.INVALID_ARGUMENT")


def test_sequences_over_a_grpc_stream(pair: tuple[Server, Server]) -> None:
    sequences, steps = 8, 6

    def scenario(server: Server) -> dict[int, list[Any]]:
        results: queue.Queue[Any] = queue.Queue()
        client = server.grpc
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            for step in range(steps):
                for seq in range(sequences):
                    client.async_stream_infer(
                        "accum",
                        [_value(grpcclient, float(seq + step))],
                        request_id=f"{seq}:{step}",
                        sequence_id=2000 + seq,
                        sequence_start=step == 0,
                        sequence_end=step == steps - 1,
                    )
            answers: dict[int, list[Any]] = {}
            for _ in range(sequences * steps):
                result, error = results.get(timeout=60)
                assert error is None, error
                seq, step = (int(x) for x in result.get_response().id.split(":"))
                answers.setdefault(seq, []).append((step, _sequence_result(result)))
        finally:
            client.stop_stream()
        return answers

    _both(pair, scenario)


# -- response cache ----------------------------------------------------------------------------


def _add_inputs(module: Any, a: float) -> list[Any]:
    tensors = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
    tensors[0].set_data_from_numpy(np.full((1, 16), a, dtype=np.float32))
    tensors[1].set_data_from_numpy(np.arange(16, dtype=np.float32).reshape(1, 16))
    return tensors


def test_response_cache_hits_and_misses(pair: tuple[Server, Server]) -> None:
    def scenario(server: Server) -> Any:
        outputs = []
        for value in (1.0, 1.0, 2.0, 1.0):
            outputs.append(server.http.infer("cached", _add_inputs(httpclient, value)).as_numpy("OUTPUT0").tolist())
        # Both servers count a request after its response is on the wire, so a loaded machine can
        # read the counters a moment early: read until the four requests are counted (2 s at most).
        deadline = time.monotonic() + 2.0
        while True:
            stats = server.http.get_inference_statistics("cached")["model_stats"][0]
            infer = stats["inference_stats"]
            with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
                text = response.read().decode()
            hits = re.search(r'^nv_cache_num_hits_per_model\{model="cached",version="1"\} (\d+)', text, re.M)
            misses = re.search(r'^nv_cache_num_misses_per_model\{model="cached",version="1"\} (\d+)', text, re.M)
            counted = sum(int(m.group(1)) for m in (hits, misses) if m) == 4 or not (hits or misses)
            if (infer["success"]["count"] == 4 and counted) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return (
            outputs,
            infer["cache_hit"]["count"],
            infer["cache_miss"]["count"],
            infer["success"]["count"],
            stats["inference_count"],
            hits and hits.group(1),
            misses and misses.group(1),
        )

    outcome = _both(pair, scenario)
    assert outcome[1:3] == (2, 2)


# -- system shared memory ----------------------------------------------------------------------


def test_system_shared_memory(pair: tuple[Server, Server]) -> None:
    nbytes = 64
    a = np.full((1, 16), 3.0, dtype=np.float32)
    b = np.arange(16, dtype=np.float32).reshape(1, 16)

    def scenario(server: Server) -> list[Any]:
        key = f"shipyard_conf_{os.getpid()}_{server.name}"
        inputs = shm.create_shared_memory_region("in", f"/{key}_in", 2 * nbytes)
        outputs = shm.create_shared_memory_region("out", f"/{key}_out", 2 * nbytes)
        shm.set_shared_memory_region(inputs, [a, b])
        seen: list[Any] = []
        try:
            for client, module in ((server.http, httpclient), (server.grpc, grpcclient)):
                client.unregister_system_shared_memory()
                client.register_system_shared_memory("in", f"/{key}_in", 2 * nbytes)
                client.register_system_shared_memory("out", f"/{key}_out", 2 * nbytes)
                status = client.get_system_shared_memory_status()
                if module is httpclient:
                    seen.append(sorted((r["name"], r["offset"], r["byte_size"]) for r in status))
                else:
                    seen.append(sorted((r.name, r.offset, r.byte_size) for r in status.regions.values()))
                tensors = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
                tensors[0].set_shared_memory("in", nbytes)
                tensors[1].set_shared_memory("in", nbytes, offset=nbytes)
                requested = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
                requested[0].set_shared_memory("out", nbytes)
                requested[1].set_shared_memory("out", nbytes, offset=nbytes)
                client.infer("add_sub", tensors, outputs=requested)
                seen.append(shm.get_contents_as_numpy(outputs, np.float32, [2, 16]).tolist())
                for region, size, offset in (("nope", nbytes, 0), ("in", nbytes, 2 * nbytes), ("in", nbytes, 96)):
                    bad = [module.InferInput("INPUT0", [1, 16], "FP32"), module.InferInput("INPUT1", [1, 16], "FP32")]
                    for tensor in bad:
                        tensor.set_shared_memory(region, size, offset=offset)
                    seen.append(_status(lambda c=client, t=bad: c.infer("add_sub", t)))
                seen.append(_status(lambda c=client: c.register_system_shared_memory("in", f"/{key}_in", 8)))
                seen.append(_status(lambda c=client: c.register_system_shared_memory("x", "/no_such_key_zz", 8)))
                seen.append(_status(lambda c=client: c.register_system_shared_memory("y", f"/{key}_in", 4096)))
                seen.append(_status(lambda c=client: c.get_system_shared_memory_status("nope")))
                client.unregister_system_shared_memory("in")
                client.unregister_system_shared_memory()
                status = client.get_system_shared_memory_status()
                seen.append(len(status) if module is httpclient else len(status.regions))
        finally:
            shm.destroy_shared_memory_region(inputs)
            shm.destroy_shared_memory_region(outputs)
        return seen

    triton, shipyard = (scenario(server) for server in pair)
    assert shipyard == [_expected(outcome) for outcome in triton], f"triton: {triton}\nshipyard: {shipyard}"
