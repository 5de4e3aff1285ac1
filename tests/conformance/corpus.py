"""The request corpus of the differential suite: every request is sent to the real Triton and to
shipyard, and what a client sees is compared.

A ``Case`` runs against one server's ``Clients`` and returns an ``Outcome``: the status (HTTP
status code, or the gRPC status code name) and, when it succeeded, what the client got (model
name and version, request id, every output's datatype, shape and exact bytes). Cases are built
once, with their data, so both servers get identical requests.

Case ``kind`` is the request's class (``valid`` or a bad-input class); ``DELIBERATE`` (in
test_differential.py) lists the classes where shipyard answers differently on purpose.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from conformance_repo import TYPED

SIMPLE_INPUTS = ("INPUT0", "INPUT1")
SIMPLE_OUTPUTS = ("OUTPUT0", "OUTPUT1")
TRANSPORTS = ("http-json", "http-binary", "grpc")


@dataclass
class Clients:
    """One server's clients: tritonclient http and grpc, and its REST port for raw requests."""

    name: str
    http: Any
    grpc: Any
    http_port: int
    grpc_url: str = ""


@dataclass(frozen=True)
class Outcome:
    status: str
    body: Any = None

    def brief(self) -> str:
        return self.status if self.body is None else f"{self.status} {str(self.body)[:300]}"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    run: Callable[[Clients], Outcome] = field(compare=False)


# --------------------------------------------------------------------------------------------- helpers


def _array_key(array: np.ndarray) -> tuple[Any, ...]:
    """What must match bit for bit: dtype, shape and the bytes (the items for BYTES)."""
    if array.dtype == np.object_:
        return ("object", array.shape, tuple(x if isinstance(x, (bytes, str)) else repr(x) for x in array.ravel()))
    return (array.dtype.str, array.shape, array.tobytes())


def _ok_outcome(status: str, result: Any, grpc: bool) -> Outcome:
    if grpc:
        response = result.get_response()
        names = [o.name for o in response.outputs]
        head = (response.model_name, response.model_version, response.id)
    else:
        response = result.get_response()
        names = [o["name"] for o in response.get("outputs", [])]
        head = (response.get("model_name"), response.get("model_version"), response.get("id", ""))
    outputs = tuple(sorted((name, *_array_key(result.as_numpy(name))) for name in names))
    return Outcome(status, (head, outputs))


def _infer_case(
    case_id: str,
    kind: str,
    transport: str,
    model: str,
    inputs: Sequence[tuple[str, str, np.ndarray]],
    outputs: Sequence[str] = (),
    version: str = "",
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> Case:
    """An inference through tritonclient: ``inputs`` are (name, datatype, array)."""

    def run(clients: Clients) -> Outcome:
        from tritonclient.utils import InferenceServerException

        if transport == "grpc":
            import tritonclient.grpc as lib

            client = clients.grpc
        else:
            import tritonclient.http as lib  # type: ignore[no-redef]

            client = clients.http
        binary = transport != "http-json"
        infer_inputs = []
        for name, datatype, array in inputs:
            tensor = lib.InferInput(name, list(array.shape), datatype)
            if transport == "grpc":
                tensor.set_data_from_numpy(array)
            else:
                tensor.set_data_from_numpy(array, binary_data=binary)
            infer_inputs.append(tensor)
        requested = None
        if outputs:
            if transport == "grpc":
                requested = [lib.InferRequestedOutput(o) for o in outputs]
            else:
                requested = [lib.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        try:
            result = client.infer(
                model, infer_inputs, model_version=version, outputs=requested, request_id=request_id,
                parameters=parameters,
            )  # fmt: skip
        except InferenceServerException as exc:
            return Outcome(_status(exc))
        return _ok_outcome("OK" if transport == "grpc" else "200", result, transport == "grpc")

    return Case(case_id, kind, run)


def _status(exc: Any) -> str:
    status = str(exc.status() or "")
    return status.replace("StatusCode.", "")


def _raw(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def normalize_json_response(data: Any) -> Any:
    """A raw REST inference response, outputs by name; Triton's ensemble ``parameters`` (sequence
    fields of a non-sequence request) left out (deliberate difference, see docs)."""
    if isinstance(data, dict) and isinstance(data.get("outputs"), list):
        data = dict(data)
        data["outputs"] = sorted(data["outputs"], key=lambda o: o.get("name", ""))
        if data.get("parameters") == {"sequence_id": 0, "sequence_start": False, "sequence_end": False}:
            del data["parameters"]
    return data


def _raw_case(
    case_id: str,
    kind: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    status_only: bool = False,
) -> Case:
    """A request as curl would send it; success compares the whole (normalized) JSON, or the
    JSON header and the binary tail of a binary response."""

    def run(clients: Clients) -> Outcome:
        status, data, response_headers = _raw(clients.http_port, method, path, body, headers)
        if status != 200 or status_only:
            return Outcome(str(status))
        header_length = response_headers.get("inference-header-content-length")
        if header_length is not None:
            head = json.loads(data[: int(header_length)])
            return Outcome("200", (normalize_json_response(head), data[int(header_length) :]))
        return Outcome("200", normalize_json_response(json.loads(data)) if data else None)

    return Case(case_id, kind, run)


def _call_case(case_id: str, kind: str, transport: str, method: str, *args: Any) -> Case:
    """A non-inference tritonclient call (metadata, config, ready, stats, load...)."""

    def run(clients: Clients) -> Outcome:
        from tritonclient.utils import InferenceServerException

        client = clients.grpc if transport == "grpc" else clients.http
        try:
            if transport == "grpc" and method in ("get_model_metadata", "get_model_config"):
                value = getattr(client, method)(*args, as_json=True)
            else:
                value = getattr(client, method)(*args)
        except InferenceServerException as exc:
            return Outcome(_status(exc))
        body = value if method in ("get_model_metadata", "is_model_ready", "is_server_ready") else None
        return Outcome("OK" if transport == "grpc" else "200", body)

    return Case(case_id, kind, run)


# --------------------------------------------------------------------------------------------- corpus


def _simple_inputs(rng: np.random.Generator, batch: int) -> list[tuple[str, str, np.ndarray]]:
    return [(n, "FP32", rng.standard_normal((batch, 16)).astype(np.float32)) for n in SIMPLE_INPUTS]


def _typed_array(datatype: str, length: int, rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([f"item-{i}-{rng.integers(1000)}".encode() for i in range(length)], dtype=np.object_)
    if datatype == "BOOL":
        return rng.integers(0, 2, length).astype(bool)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.standard_normal(length).astype(dtype)
    info = np.iinfo(np.dtype(datatype.lower()))
    return rng.integers(info.min, info.max, length, dtype=np.dtype(datatype.lower()), endpoint=True)


def valid_cases(rng: np.random.Generator) -> Iterator[Case]:
    for transport in TRANSPORTS:
        for batch in range(1, 9):
            for version in ("", "1", "2"):
                yield _infer_case(
                    f"simple/{transport}/b{batch}/v{version or 'latest'}", "valid", transport, "simple",
                    _simple_inputs(rng, batch), version=version,
                )  # fmt: skip
        for outputs in (("OUTPUT0",), ("OUTPUT1",), ("OUTPUT1", "OUTPUT0")):
            yield _infer_case(
                f"simple/{transport}/outputs-{'+'.join(outputs)}", "valid", transport, "simple",
                _simple_inputs(rng, 2), outputs=outputs,
            )  # fmt: skip
        yield _infer_case(
            f"simple/{transport}/request-id", "valid", transport, "simple", _simple_inputs(rng, 1), request_id="req-42"
        )
        yield _infer_case(
            f"simple/{transport}/priority-timeout", "valid", transport, "simple", _simple_inputs(rng, 1),
            parameters={"priority": 0, "timeout": 10_000_000},
        )  # fmt: skip
        for datatype in TYPED:
            for length in (1, 5):
                # Every request carries IN_FP16 (all inputs are required): over JSON, Triton refuses it.
                yield _infer_case(
                    f"typed/{transport}/{datatype}/n{length}", "fp16-json" if transport == "http-json" else "valid",
                    transport, "typed", [(f"IN_{t}", t, _typed_array(t, length, rng)) for t in TYPED],
                    outputs=(f"OUT_{datatype}",),
                )  # fmt: skip
        for batch in range(1, 9):
            yield _infer_case(
                f"pipeline/{transport}/b{batch}", "valid", transport, "pipeline",
                [("A", "FP32", a) for _, _, a in _simple_inputs(rng, batch)[:1]]
                + [("B", "FP32", rng.standard_normal((batch, 16)).astype(np.float32))],
            )  # fmt: skip
    for transport in ("http-binary", "grpc"):
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38, -3.4e38, 1.0] * 2, dtype=np.float32)
        for name, a, b in (
            ("nan-inf", specials.reshape(1, 16), np.ones((1, 16), np.float32)),
            ("overflow", np.full((1, 16), 3.4e38, np.float32), np.full((1, 16), 3.4e38, np.float32)),
            ("denormal", np.full((1, 16), 1e-45, np.float32), np.full((1, 16), -1e-45, np.float32)),
        ):
            yield _infer_case(
                f"simple/{transport}/special-{name}", "valid", transport, "simple",
                [("INPUT0", "FP32", a), ("INPUT1", "FP32", b)],
            )  # fmt: skip


def error_cases(rng: np.random.Generator) -> Iterator[Case]:
    """Every bad-input class, over each transport, for a batching model and an ensemble."""
    for transport in TRANSPORTS:
        for model, names in (("simple", SIMPLE_INPUTS), ("pipeline", ("A", "B"))):

            def good(batch: int = 1, names: Sequence[str] = names) -> list[tuple[str, str, np.ndarray]]:
                return [(n, "FP32", rng.standard_normal((batch, 16)).astype(np.float32)) for n in names]

            first = names[0]
            bad: dict[str, tuple[list[tuple[str, str, np.ndarray]], dict[str, Any]]] = {
                "wrong-input-name": ([("NOPE", "FP32", good()[0][2]), good()[1]], {}),
                "wrong-dtype": ([(first, "INT32", np.ones((1, 16), np.int32)), good()[1]], {}),
                "wrong-dtype-fp64": ([(first, "FP64", np.ones((1, 16), np.float64)), good()[1]], {}),
                "wrong-shape": ([(first, "FP32", np.ones((1, 15), np.float32)), good()[1]], {}),
                "wrong-rank": ([(first, "FP32", np.ones((1, 4, 4), np.float32)), good()[1]], {}),
                "no-batch-dim": ([(n, "FP32", np.ones(16, np.float32)) for n in names], {}),
                "missing-input": (good()[:1], {}),
                "batch-over-max": (good(9), {}),
                "batch-mismatch": ([good(2)[0], good(3)[1]], {}),
                "extra-input": ([*good(), ("EXTRA", "FP32", np.ones((1, 16), np.float32))], {}),
                "unknown-output": (good(), {"outputs": ("NOPE",)}),
                "unknown-version": (good(), {"version": "7"}),
            }
            if transport != "grpc":  # tritonclient's gRPC InferInput cannot send an empty list of inputs
                bad["no-inputs"] = ([], {})
            for kind, (inputs, extra) in bad.items():
                yield _infer_case(f"{model}/{transport}/{kind}", kind, transport, model, inputs, **extra)
        yield _infer_case(f"nope/{transport}/unknown-model", "unknown-model", transport, "nope", good())
        yield _infer_case(
            f"typed/{transport}/wrong-rank", "wrong-rank", transport, "typed",
            [(f"IN_{t}", t, _typed_array(t, 4, rng).reshape(2, 2)) for t in TYPED],
        )  # fmt: skip


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()


def _simple_json(batch: int, rng: np.random.Generator, **extra: Any) -> dict[str, Any]:
    inputs = [
        {
            "name": n,
            "datatype": "FP32",
            "shape": [batch, 16],
            "data": rng.standard_normal(batch * 16).astype(np.float32).tolist(),
        }
        for n in SIMPLE_INPUTS
    ]
    return {"inputs": inputs, **extra}


def _binary_body(header: dict[str, Any], tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = _json(header)
    return head + tail, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def raw_cases(rng: np.random.Generator) -> Iterator[Case]:
    """Requests as curl sends them: valid JSON and binary bodies, and every malformed-body class."""
    infer = "/v2/models/simple/infer"
    for batch in (1, 2, 3, 8):
        yield _raw_case(
            f"raw/simple-json/b{batch}", "valid", "POST", infer, _json(_simple_json(batch, rng, id=f"r{batch}"))
        )
    yield _raw_case(
        "raw/simple-json/v1", "valid", "POST", "/v2/models/simple/versions/1/infer", _json(_simple_json(2, rng))
    )
    yield _raw_case(
        "raw/simple-json/one-output", "valid", "POST", infer, _json(_simple_json(1, rng, outputs=[{"name": "OUTPUT1"}]))
    )
    for batch in (1, 4):
        body = _simple_json(batch, rng)
        for item, name in zip(body["inputs"], ("A", "B"), strict=True):
            item["name"] = name
        yield _raw_case(f"raw/pipeline-json/b{batch}", "valid", "POST", "/v2/models/pipeline/infer", _json(body))
    for batch in (1, 5):
        arrays = [rng.standard_normal((batch, 16)).astype(np.float32) for _ in SIMPLE_INPUTS]
        header = {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [batch, 16], "parameters": {"binary_data_size": a.nbytes}}
                for n, a in zip(SIMPLE_INPUTS, arrays, strict=True)
            ],
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in SIMPLE_OUTPUTS],
        }
        body, headers = _binary_body(header, b"".join(a.tobytes() for a in arrays))
        yield _raw_case(f"raw/simple-binary/b{batch}", "valid", "POST", infer, body, headers)
    ok = _simple_json(1, rng)
    two = [dict(i) for i in ok["inputs"]]
    malformed: dict[str, tuple[bytes, dict[str, str]]] = {
        "bad-json": (b"{not json", {}),
        "empty-body": (b"", {}),
        "json-not-object": (_json([1, 2, 3]), {}),
        "inputs-not-list": (_json({"inputs": {}}), {}),
        "data-count-mismatch": (_json({"inputs": [dict(two[0], data=two[0]["data"][:15]), two[1]]}), {}),
        "shape-not-list": (_json({"inputs": [dict(two[0], shape="1,16"), two[1]]}), {}),
        "missing-datatype": (_json({"inputs": [{k: v for k, v in two[0].items() if k != "datatype"}, two[1]]}), {}),
        "unknown-datatype": (_json({"inputs": [dict(two[0], datatype="FP8"), two[1]]}), {}),
        "non-numeric-data": (_json({"inputs": [dict(two[0], data=["x"] * 16), two[1]]}), {}),
        "missing-data": (_json({"inputs": [{k: v for k, v in two[0].items() if k != "data"}, two[1]]}), {}),
        "binary-size-mismatch": _binary_body(
            {
                "inputs": [
                    {"name": n, "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 60}}
                    for n in SIMPLE_INPUTS
                ]
            },
            b"\0" * 120,
        ),
        "binary-data-short": _binary_body(
            {
                "inputs": [
                    {"name": n, "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}
                    for n in SIMPLE_INPUTS
                ]
            },
            b"\0" * 100,
        ),
        "binary-header-past-body": (b'{"inputs": []}', {"Inference-Header-Content-Length": "500"}),
    }
    for kind, (body, headers) in malformed.items():
        yield _raw_case(f"raw/{kind}", kind, "POST", infer, body, headers)
    yield _raw_case(
        "raw/version-not-a-number", "version-not-a-number", "POST", "/v2/models/simple/versions/abc/infer", _json(ok)
    )
    yield _raw_case("raw/unknown-model", "unknown-model", "POST", "/v2/models/nope/infer", _json(ok))
    for path in ("/v2/models/simple", "/v2/models/simple/versions/1", "/v2/models/pipeline", "/v2/models/typed"):
        yield _raw_case(f"raw/metadata{path}", "valid", "GET", path)
    # Triton answers health checks with an empty body, shipyard with a JSON one (deliberate): statuses only
    yield _raw_case("raw/ready/simple", "valid", "GET", "/v2/models/simple/ready", status_only=True)
    yield _raw_case("raw/ready/unknown", "ready-unknown-model", "GET", "/v2/models/nope/ready")
    yield _raw_case("raw/health/live", "valid", "GET", "/v2/health/live", status_only=True)
    yield _raw_case("raw/health/ready", "valid", "GET", "/v2/health/ready", status_only=True)
    yield _raw_case("raw/index", "valid", "POST", "/v2/repository/index", b"{}")
    yield _raw_case("raw/index-ready", "valid", "POST", "/v2/repository/index", _json({"ready": True}))


def control_cases() -> Iterator[Case]:
    """Metadata, config, readiness, statistics and repository calls through both clients."""
    for transport in ("http", "grpc"):
        for model, version in (("simple", ""), ("simple", "1"), ("simple", "2"), ("pipeline", ""), ("typed", "")):
            tag = f"{model}/v{version or 'latest'}"
            yield _call_case(f"{transport}/metadata/{tag}", "valid", transport, "get_model_metadata", model, version)
            yield _call_case(f"{transport}/ready/{tag}", "valid", transport, "is_model_ready", model, version)
            yield _call_case(f"{transport}/config/{tag}", "valid", transport, "get_model_config", model, version)
            yield _call_case(f"{transport}/stats/{tag}", "valid", transport, "get_inference_statistics", model, version)
        yield _call_case(f"{transport}/metadata/unknown", "unknown-model", transport, "get_model_metadata", "nope")
        yield _call_case(
            f"{transport}/metadata/unknown-version", "unknown-version", transport, "get_model_metadata", "simple", "7"
        )
        yield _call_case(f"{transport}/config/unknown", "unknown-model", transport, "get_model_config", "nope")
        yield _call_case(f"{transport}/ready/unknown", "valid", transport, "is_model_ready", "nope")
        yield _call_case(
            f"{transport}/stats/unknown", "stats-unknown-model", transport, "get_inference_statistics", "nope"
        )
        yield _call_case(f"{transport}/load/none-mode", "load-in-none-mode", transport, "load_model", "simple")
        yield _call_case(f"{transport}/unload/none-mode", "load-in-none-mode", transport, "unload_model", "simple")
        yield _call_case(f"{transport}/server-ready", "valid", transport, "is_server_ready")


def _stream_case(case_id: str, kind: str, count: int) -> Case:
    """A gRPC ModelStreamInfer to the decoupled model: every response in order, then the final flag."""

    def run(clients: Clients) -> Outcome:
        import queue

        import tritonclient.grpc as grpcclient

        received: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(clients.grpc_url)  # a stream of its own
        client.start_stream(callback=lambda result, error: received.put((result, error)))
        try:
            tensor = grpcclient.InferInput("N", [1], "INT32")
            tensor.set_data_from_numpy(np.array([count], dtype=np.int32))
            client.async_stream_infer("decoupled", [tensor], request_id=case_id, enable_empty_final_response=True)
            seen: list[Any] = []
            for _ in range(count + 2):
                result, error = received.get(timeout=30)
                if error is not None:
                    return Outcome(_status(error), tuple(seen))
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                outputs = tuple(int(result.as_numpy(o.name)[0]) for o in response.outputs)
                seen.append((response.id, outputs, final))
                if final:
                    break
            return Outcome("OK", tuple(seen))
        finally:
            client.stop_stream()
            client.close()

    return Case(case_id, kind, run)


def _cancel_case(case_id: str, how: str) -> Case:
    """A gRPC call to ``cancel`` (MODE 0: the model waits for ``is_cancelled()``) that the client
    abandons: ``deadline`` (the call's timeout passes) or ``cancel`` (``CallContext.cancel()``)."""

    def run(clients: Clients) -> Outcome:
        import queue

        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        tensor = grpcclient.InferInput("MODE", [1], "INT32")
        tensor.set_data_from_numpy(np.array([0], dtype=np.int32))
        if how == "deadline":
            try:
                clients.grpc.infer("cancel", [tensor], client_timeout=0.5)
            except InferenceServerException as exc:
                return Outcome(_status(exc))
            return Outcome("OK")
        answers: queue.Queue[Any] = queue.Queue()
        call = clients.grpc.async_infer("cancel", [tensor], callback=lambda result, error: answers.put(error))
        time.sleep(0.3)
        call.cancel()
        error = answers.get(timeout=30)
        return Outcome("OK" if error is None else _status(error))

    return Case(case_id, "client-cancel", run)


def python_cases(rng: np.random.Generator) -> Iterator[Case]:
    """Python-backend behaviours: errors raised or returned with each TritonError code, BLS into
    another model (and its errors), decoupled responses over a stream, unary calls to it."""
    for transport in TRANSPORTS:
        for code in (-1, *range(8), 100, -2, 42):
            # -2: an output the config does not list is dropped (both answer 200 without it)
            kind = "valid" if code in (42, -2) else f"python-error-{code}"
            yield _infer_case(
                f"errors/{transport}/code{code}", kind, transport, "errors",
                [("CODE", "INT32", np.array([code], dtype=np.int32))],
            )  # fmt: skip
        for target in ("simple", "nope", "typed"):
            for batch in (1, 3) if target == "simple" else (1,):
                names = np.array([[target.encode()]] * batch, dtype=np.object_)
                inputs = [*_simple_inputs(rng, batch), ("TARGET", "BYTES", names)]
                kind = "valid" if target == "simple" else f"bls-to-{target}"
                yield _infer_case(f"bls/{transport}/{target}/b{batch}", kind, transport, "bls", inputs)
        yield _infer_case(
            f"decoupled/{transport}/unary", "decoupled-unary", transport, "decoupled",
            [("N", "INT32", np.array([2], dtype=np.int32))],
        )  # fmt: skip
    for count in (0, 1, 3, 10):
        yield _stream_case(f"grpc/decoupled/stream-{count}", "valid", count)
    # A plain (not decoupled) model sees the client abandon its call: request.is_cancelled().
    yield _cancel_case("grpc/cancel/deadline", "deadline")
    yield _cancel_case("grpc/cancel/cancel", "cancel")
    for transport in TRANSPORTS:  # how many of the calls above the model saw cancelled (2)
        seen = [("MODE", "INT32", np.array([1], dtype=np.int32))]
        yield _infer_case(f"cancel/{transport}/seen", "valid", transport, "cancel", seen)


def build_corpus(seed: int = 15, python: bool = False) -> list[Case]:
    """Every case; ``python`` adds the Python-backend behaviours (both servers run model.py)."""
    rng = np.random.default_rng(seed)
    cases = [*valid_cases(rng), *error_cases(rng), *raw_cases(rng), *control_cases()]
    if python:
        cases += python_cases(np.random.default_rng(seed + 1))
    return cases
