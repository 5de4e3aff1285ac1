"""The gRPC fast path (``grpc_codec.fast_request``) builds exactly what the general path builds,
and leaves every unusual or invalid request to the general path (which owns the error messages)."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from shipyard.serving_runtime.backends.base import TensorSpec
from shipyard.serving_runtime.errors import InvalidArgument
from shipyard.serving_runtime.protocol import grpc_codec
from shipyard.serving_runtime.protocol.validate import build_request, rules_for


@dataclass
class _Model:
    name: str = "m"
    version: int = 1
    config: Any = field(default_factory=lambda: SimpleNamespace(input=[SimpleNamespace(name="VAR", optional=True)]))
    inputs: tuple[TensorSpec, ...] = (
        TensorSpec("INPUT0", "FP32", (16,)),
        TensorSpec("INPUT1", "INT32", (2, 3)),
        TensorSpec("VAR", "INT64", (-1,)),
    )
    outputs: tuple[TensorSpec, ...] = (TensorSpec("OUT0", "FP32", (16,)), TensorSpec("OUT1", "FP32", (16,)))
    max_batch_size: int = 8


def _request(**arrays: np.ndarray) -> Any:
    return grpc_codec.encode_infer_request("m", arrays, request_id="r1")


def _good(batch: int = 2) -> dict[str, np.ndarray]:
    return {
        "INPUT0": np.arange(16 * batch, dtype=np.float32).reshape(batch, 16),
        "INPUT1": np.arange(6 * batch, dtype=np.int32).reshape(batch, 2, 3),
    }


def _general(model: _Model, request: Any) -> Any:
    return build_request(model, grpc_codec.decode_infer_request(request))


def _same(a: Any, b: Any) -> None:
    assert (a.outputs, a.batch_size, a.priority, a.timeout_us, a.request_id, a.parameters) == (
        b.outputs,
        b.batch_size,
        b.priority,
        b.timeout_us,
        b.request_id,
        b.parameters,
    )
    assert list(a.inputs) == list(b.inputs)
    for name in a.inputs:
        assert a.inputs[name].dtype == b.inputs[name].dtype
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name])


def test_common_requests_take_the_fast_path_and_match_the_general_path() -> None:
    model = _Model()
    cases = [
        _request(**_good(1)),
        _request(**_good(8)),
        _request(**_good(3), VAR=np.arange(15, dtype=np.int64).reshape(3, 5)),
    ]
    with_outputs = _request(**_good(2))
    with_outputs.outputs.add(name="OUT1")
    with_outputs.outputs.add(name="OUT1")
    cases.append(with_outputs)
    for request in cases:
        fast = grpc_codec.fast_request(rules_for(model), request)
        assert fast is not None
        _same(fast, _general(model, request))
    assert grpc_codec.fast_request(rules_for(model), with_outputs).outputs == ("OUT1",)


def _variants() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    def add(label: str, request: Any) -> None:
        out.append((label, request))

    add("batch above max", _request(**_good(9)))
    add("wrong datatype", _request(INPUT0=np.zeros((1, 16), np.float64), INPUT1=_good(1)["INPUT1"]))
    add("wrong dims", _request(INPUT0=np.zeros((1, 15), np.float32), INPUT1=_good(1)["INPUT1"]))
    add("no batch dim", _request(INPUT0=np.zeros((16,), np.float32), INPUT1=_good(1)["INPUT1"]))
    add("batch mismatch", _request(INPUT0=_good(2)["INPUT0"], INPUT1=_good(3)["INPUT1"]))
    add("missing input", _request(INPUT0=_good(1)["INPUT0"]))
    add("unknown input", _request(**_good(1), NOPE=np.zeros((1, 1), np.float32)))
    short = _request(**_good(1))
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    add("short buffer", short)
    negative = _request(**_good(1), VAR=np.zeros((1, 2), np.int64))
    del negative.inputs[2].shape[:]
    negative.inputs[2].shape.extend([1, -2])
    add("negative dim", negative)
    with_param = _request(**_good(1))
    with_param.parameters["priority"].int64_param = 1
    add("request parameter", with_param)
    bad_param = _request(**_good(1))
    bad_param.parameters["timeout"].string_param = "soon"
    add("bad request parameter", bad_param)
    shm = _request(**_good(1))
    shm.inputs[0].parameters["shared_memory_region"].string_param = "r"
    add("shared memory input", shm)
    unknown_out = _request(**_good(1))
    unknown_out.outputs.add(name="NOPE")
    add("unknown output", unknown_out)
    typed = service_pb2.ModelInferRequest(model_name="m")
    for name, array in _good(1).items():
        tensor = typed.inputs.add(name=name, datatype="FP32" if name == "INPUT0" else "INT32", shape=array.shape)
        field_name = "fp32_contents" if name == "INPUT0" else "int_contents"
        getattr(tensor.contents, field_name).extend(array.reshape(-1).tolist())
    add("typed contents", typed)
    return out


@pytest.mark.parametrize("label,request_", _variants(), ids=[label for label, _ in _variants()])
def test_other_requests_go_to_the_general_path(label: str, request_: Any) -> None:
    model = _Model()
    assert grpc_codec.fast_request(rules_for(model), request_) is None, label
    try:
        _general(model, request_)  # the general path answers them: a request or the error
    except InvalidArgument as exc:
        assert exc.message


def test_rules_are_cached_per_model_object() -> None:
    model = _Model()
    assert rules_for(model) is rules_for(model)
    reloaded = _Model(max_batch_size=4)  # a reload is a new object: its own rules
    assert rules_for(reloaded).max_batch_size == 4 and rules_for(model).max_batch_size == 8
    del model
    gc.collect()
    assert rules_for(reloaded).max_batch_size == 4
