"""The REST fast lane (``protocol/rest_fast.py``).

Real servers on loopback, raw HTTP/1.1 sockets, tritonclient http and curl: the same requests
against a server with the lane (the default) and one without (``--no-rest-fast-path``) must get
byte-identical responses (the ``date`` header aside), valid ones and every error class, mutated
headers included; concurrent requests each get their own rows; statistics count every request;
keep-alive, pipelining, a stalled body and an unload/reload behave as on the ASGI path.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from server_harness import (
    SIMPLE_CONFIG,
    SLOW_CONFIG,
    ServerProcess,
    http_get,
    http_post,
    metric_value,
    simple_onnx,
    slow_onnx,
    start_server,
    write_model,
)

BATCHED_CONFIG = SIMPLE_CONFIG.replace('name: "simple"', 'name: "batched"').replace(
    "instance_group", "dynamic_batching { }\ninstance_group"
)
MODELS = ("batched", "simple")
PY_EACH = Path(__file__).parent / "python_fast_repo" / "py_each"  # a Python model: never on the lane
LANE_LOG = "REST inference takes the fast lane"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess, Path]]:
    """(lane on, lane off) over the same repository, explicit model control, 1 s body timeout."""
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "batched", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, BATCHED_CONFIG)
    write_model(repo, "simple", {1: simple_onnx(0.0), 2: simple_onnx(100.0)}, SIMPLE_CONFIG)  # default scheduler
    shutil.copytree(PY_EACH, repo / "py_each")
    write_model(repo, "slow", {1: slow_onnx()}, SLOW_CONFIG + "dynamic_batching { }\n")
    started: list[ServerProcess] = []
    common = ("--model-control-mode", "explicit", "--load-model", "batched", "--load-model", "simple",
              "--load-model", "py_each", "--load-model", "slow", "--http-body-timeout-secs", "1")  # fmt: skip
    try:
        for flags in ((), ("--no-rest-fast-path",)):
            wait = (*MODELS, "py_each", "slow")
            started.append(start_server(tmp_path_factory.mktemp("lane"), [repo], *common, *flags, wait_models=wait))
        yield started[0], started[1], repo
    finally:
        for server in started:
            server.stop()


# -- raw HTTP ----------------------------------------------------------------------------------


def _binary(model: str = "batched", batch: int = 1, seed: float = 0.0, header: dict[str, Any] | None = None,
            version: str | None = None, extra_headers: str = "") -> bytes:  # fmt: skip
    """A raw binary-tensor inference request (request line, headers and body)."""
    a = (np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) + seed).tobytes()
    b = (np.ones((batch, 16), dtype=np.float32) * (seed + 1)).tobytes()
    obj: dict[str, Any] = {
        "inputs": [
            {"name": "INPUT0", "shape": [batch, 16], "datatype": "FP32", "parameters": {"binary_data_size": len(a)}},
            {"name": "INPUT1", "shape": [batch, 16], "datatype": "FP32", "parameters": {"binary_data_size": len(b)}},
        ]
    }
    obj.update(header or {})
    head = json.dumps(obj).encode()
    return _request(model, head + a + b, len(head), version, extra_headers)


def _request(model: str, body: bytes, header_length: int | None, version: str | None = None,
             extra_headers: str = "") -> bytes:  # fmt: skip
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    if header_length is not None:
        head += f"Inference-Header-Content-Length: {header_length}\r\n"
    return (head + extra_headers + "\r\n").encode() + body


def _read_response(sock: socket.socket, buffer: bytearray) -> bytes:
    """One response off ``sock`` (by its content-length), the rest stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {bytes(buffer)!r}")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    match = re.search(rb"content-length: (\d+)", bytes(buffer[:end]))
    total = end + (int(match.group(1)) if match else 0)
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        buffer += chunk
    response = bytes(buffer[:total])
    del buffer[:total]
    return re.sub(rb"date: [^\r]*\r\n", b"date: -\r\n", response)


def _exchange(server: ServerProcess, payload: bytes, responses: int = 1) -> list[bytes]:
    """Send ``payload`` on a new connection and read ``responses`` responses."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(payload)
        buffer = bytearray()
        return [_read_response(sock, buffer) for _ in range(responses)]


def _warm(lane: ServerProcess, off: ServerProcess) -> None:
    """Serve each path once on the ASGI path: the lane registers it."""
    for server in (lane, off):
        for model in MODELS:
            for version in (None, "1", "2"):
                assert _exchange(server, _binary(model, version=version))[0].startswith(b"HTTP/1.1 200")
    assert LANE_LOG in lane.log()
    assert LANE_LOG not in off.log()


def _same(lane: ServerProcess, off: ServerProcess, payload: bytes, responses: int = 1) -> list[bytes]:
    got, want = _exchange(lane, payload, responses), _exchange(off, payload, responses)
    assert got == want, f"lane and ASGI path differ for {payload[:300]!r}"
    return got


# -- cases -------------------------------------------------------------------------------------

OUT_BINARY = {"outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": True}}, {"name": "OUTPUT0"}]}
VALID: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("batch 3, id", {"batch": 3, "header": {"id": "req-7"}}),
    ("version 2", {"version": "2", "batch": 2}),
    ("binary_data_output", {"header": {"parameters": {"binary_data_output": True}}}),
    ("binary_data_output false", {"header": {"parameters": {"binary_data_output": False}}}),
    ("per-output binary", {"header": OUT_BINARY}),
    ("one output", {"header": {"outputs": [{"name": "OUTPUT1"}]}}),
    ("default scheduler", {"model": "simple", "batch": 2}),
    ("empty parameters", {"header": {"parameters": {}, "outputs": []}}),
]


def test_valid_requests_get_identical_bytes(servers: tuple[ServerProcess, ServerProcess, Path]) -> None:
    lane, off, _ = servers
    _warm(lane, off)
    for what, kwargs in VALID:
        response = _same(lane, off, _binary(**kwargs))[0]
        assert response.startswith(b"HTTP/1.1 200 OK\r\n"), what
    # JSON tensors, no Inference-Header-Content-Length
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": list(range(16))}
                       for n in ("INPUT0", "INPUT1")]}  # fmt: skip
    response = _same(lane, off, _request("batched", json.dumps(body).encode(), None))[0]
    assert b'"data":[100.0,102.0,104.0' in response


def _mutations() -> list[tuple[str, bytes]]:
    tensor = {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}
    other = {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}

    def body(inputs: list[Any], data: bytes = b"\0" * 128, **top: Any) -> tuple[bytes, int]:
        head = json.dumps({"inputs": inputs, **top}).encode()
        return head + data, len(head)

    cases: list[tuple[str, bytes]] = []

    def add(what: str, inputs: list[Any], data: bytes = b"\0" * 128, model: str = "batched", **top: Any) -> None:
        raw, length = body(inputs, data, **top)
        cases.append((what, _request(model, raw, length)))

    add("valid (its header is parsed once, then reused)", [tensor, other])
    add("the same header, bytes left over", [tensor, other], b"\0" * 130)
    add("the same header, bytes missing", [tensor, other], b"\0" * 100)
    add("wrong datatype", [{**tensor, "datatype": "FP64"}, other])
    add("wrong shape", [{**tensor, "shape": [1, 15]}, other])
    add("batch over max", [{**tensor, "shape": [9, 16]}, {**other, "shape": [9, 16]}])
    add("batch 0", [{**tensor, "shape": [0, 16]}, {**other, "shape": [0, 16]}], b"")
    add("batches differ", [{**tensor, "shape": [2, 16]}, other], b"\0" * 192)
    add("unknown input", [tensor, {**other, "name": "INPUT9"}])
    add("missing input", [tensor], b"\0" * 64)
    add("duplicate input", [tensor, tensor])
    add("trailing bytes", [tensor, other], b"\0" * 130)
    add("short data", [tensor, other], b"\0" * 100)
    add("size mismatch", [{**tensor, "parameters": {"binary_data_size": 60}}, other], b"\0" * 124)
    add("bool size", [{**tensor, "parameters": {"binary_data_size": True}}, other], b"\0" * 65)
    add("no data", [{k: v for k, v in tensor.items() if k != "parameters"}, other], b"\0" * 64)
    add("unknown output", [tensor, other], outputs=[{"name": "OUTPUT7"}])
    add("duplicate output", [tensor, other], outputs=[{"name": "OUTPUT0"}, {"name": "OUTPUT0"}])
    add("classification", [tensor, other], outputs=[{"name": "OUTPUT0", "parameters": {"classification": 2}}])
    add("priority", [tensor, other], parameters={"priority": 1})
    add("timeout", [tensor, other], parameters={"timeout": 5})
    add("custom parameter", [tensor, other], parameters={"x": "y"})
    add("id not a string", [tensor, other], id=7)
    add("extra key", [tensor, other], sequence_id=3)
    add("shm input", [{**tensor, "parameters": {"shared_memory_region": "nope", "shared_memory_byte_size": 64}},
                      other], b"\0" * 64)  # fmt: skip
    add("shape of strings", [{**tensor, "shape": ["1", 16]}, other])
    add("unknown model", [tensor, other], model="nothere")
    add("JSON data wrong count", [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1, 2]}, other],
        b"\0" * 64)  # fmt: skip
    raw, length = body([tensor, other])
    cases += [
        ("malformed JSON", _request("batched", b"{not json" + raw[9:], length)),
        ("header length beyond body", _request("batched", raw, len(raw) + 5)),
        ("no header length", _request("batched", raw, None)),
        ("header length not a number",
         _request("batched", raw, None, extra_headers="Inference-Header-Content-Length: x\r\n")),
        ("gzip encoding", _request("batched", raw, length, extra_headers="Content-Encoding: gzip\r\n")),
        ("version 9", _request("batched", raw, length, version="9")),
        ("version word", _request("batched", raw, length, version="one")),
        ("HTTP/1.0", _request("batched", raw, length).replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
        ("connection close", _request("batched", raw, length, extra_headers="Connection: close\r\n")),
        ("query string", _request("batched", raw, length).replace(b"/infer ", b"/infer?x=1 ", 1)),
        ("GET", _request("batched", raw, length).replace(b"POST", b"GET", 1)),
    ]  # fmt: skip
    return cases


def test_errors_and_mutations_get_the_asgi_paths_answers(servers: tuple[ServerProcess, ServerProcess, Path]) -> None:
    lane, off, _ = servers
    _warm(lane, off)
    statuses = set()
    for what, payload in _mutations():
        try:
            response = _same(lane, off, payload)[0]
        except AssertionError as exc:
            raise AssertionError(what) from exc
        statuses.add(response.split(b" ")[1])
    assert {b"200", b"400", b"404"} <= statuses
    # random byte flips in the JSON header of a valid request
    rng = random.Random(21)
    valid = _binary(batch=2, header={"id": "r", "parameters": {"binary_data_output": True}})
    head_end = valid.index(b"\r\n\r\n") + 4
    header_length = int(re.search(rb"Inference-Header-Content-Length: (\d+)", valid).group(1))  # type: ignore[union-attr]
    for _ in range(60):
        mutated = bytearray(valid)
        position = head_end + rng.randrange(header_length)
        mutated[position] = rng.choice(b'{}[]",:0123456789abcdefINPUT ')
        _same(lane, off, bytes(mutated))


def test_keep_alive_and_pipelining(servers: tuple[ServerProcess, ServerProcess, Path]) -> None:
    lane, off, _ = servers
    _warm(lane, off)
    get = b"GET /v2/models/batched/ready HTTP/1.1\r\nHost: x\r\n\r\n"
    bad = _request("batched", b"{}", 2)
    sequence = _binary(seed=1) + _binary(batch=2, seed=2) + get + bad + _binary(seed=3, header={"id": "last"})
    responses = _same(lane, off, sequence, responses=5)
    assert [r.split(b" ")[1] for r in responses] == [b"200", b"200", b"200", b"400", b"200"]
    assert b'"id":"last"' in responses[-1]
    # a lane request with Connection: close is answered, then the connection is closed
    closing = _binary(extra_headers="Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", lane.http_port), timeout=10) as sock:
        sock.sendall(closing)
        buffer = bytearray()
        assert b"connection: close" in _read_response(sock, buffer)
        assert sock.recv(10) == b""


def test_a_stalled_body_times_out_as_on_the_asgi_path(servers: tuple[ServerProcess, ServerProcess, Path]) -> None:
    lane, off, _ = servers
    _warm(lane, off)
    payload = _binary()
    answers = []
    for server in (lane, off):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
            sock.sendall(payload[:-40])
            started = time.monotonic()
            answers.append(_read_response(sock, bytearray()))
            assert time.monotonic() - started < 5
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 408")


def _client_infer(server: ServerProcess, seed: float, batch: int) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.http_host)
    try:
        inputs = []
        for k, name in enumerate(("INPUT0", "INPUT1")):
            tensor = httpclient.InferInput(name, [batch, 16], "FP32")
            data = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) * (k + 1) + seed
            tensor.set_data_from_numpy(data, binary_data=True)
            inputs.append(tensor)
        result = client.infer("batched", inputs)
        return {name: result.as_numpy(name) for name in ("OUTPUT0", "OUTPUT1")}
    finally:
        client.close()


def _stats(server: ServerProcess, model: str, version: str) -> dict[str, Any]:
    status, body = http_get(f"{server.http_url}/v2/models/{model}/versions/{version}/stats")
    assert status == 200
    return json.loads(body)["model_stats"][0]  # type: ignore[no-any-return]


_metric = metric_value


def test_concurrent_requests_get_their_own_rows_and_are_counted(
    servers: tuple[ServerProcess, ServerProcess, Path],
) -> None:
    lane, off, _ = servers
    _warm(lane, off)
    before = _stats(lane, "batched", "2")
    success_before = _metric(lane, "nv_inference_request_success", "batched", "2")
    jobs = [(float(i), 1 + i % 3) for i in range(120)]
    with ThreadPoolExecutor(24) as pool:
        got = list(pool.map(lambda job: _client_infer(lane, *job), jobs))
    for (seed, batch), outputs in zip(jobs, got, strict=True):
        a = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) + seed
        b = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) * 2 + seed
        np.testing.assert_array_equal(outputs["OUTPUT0"], a + b + 100.0)
        np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)
    after = _stats(lane, "batched", "2")
    success = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    assert success == len(jobs)
    assert int(after["inference_count"]) - int(before["inference_count"]) == sum(b for _, b in jobs)
    queued = int(after["inference_stats"]["queue"]["count"]) - int(before["inference_stats"]["queue"]["count"])
    assert queued == len(jobs)
    assert _metric(lane, "nv_inference_request_success", "batched", "2") - success_before == len(jobs)
    # one request with curl, on each server: the same output
    outputs = []
    for server in (lane, off):
        body = json.dumps({"inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.5] * 16}
                                      for n in ("INPUT0", "INPUT1")]})  # fmt: skip
        done = subprocess.run(
            ["curl", "-s", "-D", "-", "-X", "POST", "--data-binary", body, "-H", "Content-Type: application/json",
             f"{server.http_url}/v2/models/batched/infer"],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        outputs.append(re.sub(rb"date: [^\r]*\r\n", b"", done.stdout))
    assert outputs[0] == outputs[1]
    assert b'"data":[103.0' in outputs[0]


def test_unload_and_reload_mid_traffic(servers: tuple[ServerProcess, ServerProcess, Path]) -> None:
    lane, off, _ = servers
    _warm(lane, off)
    statuses: list[bytes] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            response = _exchange(lane, _binary(seed=1.0))[0]
            statuses.append(response.split(b" ")[1])

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        assert http_post(f"{lane.http_url}/v2/repository/models/batched/unload", {})[0] == 200
        time.sleep(0.3)
        assert http_post(f"{lane.http_url}/v2/repository/models/batched/load", {})[0] == 200
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) <= {b"200", b"503", b"404"}, set(statuses)
    assert statuses.count(b"200") > 10
    # unloaded on both servers: the same answer; loaded again: served on the lane again
    for server in (lane, off):
        assert http_post(f"{server.http_url}/v2/repository/models/batched/unload", {})[0] == 200
    _same(lane, off, _binary())
    for server in (lane, off):
        assert http_post(f"{server.http_url}/v2/repository/models/batched/load", {})[0] == 200
    _warm(lane, off)
    response = _same(lane, off, _binary(version="2", seed=5.0))[0]
    assert response.startswith(b"HTTP/1.1 200")


def test_python_models_stay_on_the_asgi_path(servers: tuple[ServerProcess, ServerProcess, Path]) -> None:
    """A Python model may answer each request with its own parameters: the lane never takes it."""
    lane, off, _ = servers
    _warm(lane, off)
    responses = []
    for first in (0.0, -4.0, 0.0):  # -4: the model answers with response parameters
        x = np.full((2, 4), first, dtype=np.float32)
        x[1] = 3.0
        head = json.dumps({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}]}).encode()  # fmt: skip
        responses.append(_same(lane, off, _request("py_each", head + x.tobytes(), len(head)))[0])
    assert all(response.startswith(b"HTTP/1.1 200") for response in responses)
    assert b'"parameters":{"mode":"params","rows":2}' in responses[1]
    assert "model 'py_each'" not in "\n".join(line for line in lane.log().splitlines() if LANE_LOG in line)


def test_a_body_in_pieces_and_a_client_that_leaves(servers: tuple[ServerProcess, ServerProcess, Path]) -> None:
    lane, off, _ = servers
    _warm(lane, off)
    payload = _binary(batch=8, seed=4.0)
    head_end = payload.index(b"\r\n\r\n") + 4
    answers = []
    for server in (lane, off):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in (
                payload[:20],
                payload[20:head_end],
                payload[head_end : head_end + 100],
                payload[head_end + 100 :],
            ):
                sock.sendall(piece)
                time.sleep(0.05)
            answers.append(_read_response(sock, bytearray()))
    assert answers[0] == answers[1] and answers[0].startswith(b"HTTP/1.1 200")
    for _ in range(20):  # clients that send a request and go away at once
        with socket.create_connection(("127.0.0.1", lane.http_port), timeout=10) as sock:
            sock.sendall(_binary(batch=2))
    assert _same(lane, off, _binary(seed=9.0))[0].startswith(b"HTTP/1.1 200")
    assert "Traceback" not in lane.log()


def _slow_request(rows: int, seed: float) -> bytes:
    x = np.full((rows, 512), seed, dtype=np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [rows, 512], "datatype": "FP32", "parameters": {"binary_data_size": len(x)}}
            ]
        }
    ).encode()
    return _request("slow", head + x, len(head))


def _failures(server: ServerProcess, reason: str) -> float:
    body = http_get(server.http_url + "/metrics")[1].decode()
    for line in body.splitlines():
        if line.startswith("nv_inference_request_failure{") and 'model="slow"' in line and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_clients_that_leave_a_queued_group_leave_it_as_on_the_asgi_path(
    servers: tuple[ServerProcess, ServerProcess, Path],
) -> None:
    """Behind a busy instance and a queued 64-row request, requests whose clients close their
    connections while they wait (grouped with others on the lane) never run and count as CANCELED;
    the others run without them and get the ASGI path's bytes; the counts are the ASGI path's."""
    lane, off, _ = servers
    got = []
    for server in (lane, off):
        for _ in range(2):  # the first registers the path with the lane
            assert _exchange(server, _slow_request(1, 0.5))[0].startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        _exchange(server, _slow_request(64, 0.5))
        one = time.monotonic() - started  # a 64-row run
        before = _stats(server, "slow", "1")
        cancelled = _failures(server, "CANCELED")
        with ThreadPoolExecutor(2) as pool:
            blockers = [pool.submit(_exchange, server, _slow_request(64, 1.0)) for _ in range(2)]
            time.sleep(one / 10)
            socks = [socket.create_connection(("127.0.0.1", server.http_port), timeout=30) for _ in range(10)]
            for i, sock in enumerate(socks):
                sock.sendall(_slow_request(4, float(i)))
            time.sleep(one / 2)  # the first blocker runs, the second and these ten wait
            for sock in socks[:5]:
                sock.close()  # these clients give up while their requests wait
            answers = [_read_response(sock, bytearray()) for sock in socks[5:]]
            for sock in socks[5:]:
                sock.close()
            assert all(blocker.result()[0].startswith(b"HTTP/1.1 200") for blocker in blockers)
        time.sleep(0.3)
        after = _stats(server, "slow", "1")
        counts = {
            what: int(after["inference_stats"].get(what, {}).get("count", 0))
            - int(before["inference_stats"].get(what, {}).get("count", 0))
            for what in ("success", "fail")
        }
        got.append((answers, counts, _failures(server, "CANCELED") - cancelled))
    assert LANE_LOG in lane.log() and "model 'slow'" in "\n".join(x for x in lane.log().splitlines() if LANE_LOG in x)
    assert got[0] == got[1]
    assert got[0][1:] == ({"success": 7, "fail": 5}, 5)
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in got[0][0])
