"""Tiny ONNX models built with onnx.helper, shared by the runtime's tests and the conformance suite."""

from __future__ import annotations

from typing import Any


def finish_model(graph: Any) -> bytes:
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="shipyard-tests")
    model.ir_version = 8
    checker.check_model(model)
    return bytes(model.SerializeToString())


def simple_onnx(offset: float = 0.0, width: int = 16) -> bytes:
    """OUTPUT0 = INPUT0 + INPUT1 (+ offset when not 0), OUTPUT1 = INPUT0 - INPUT1; FP32 [batch, width].

    A zero offset adds no node, so the outputs equal numpy's ``a + b`` bit for bit (``-0.0 + 0.0``
    would turn a negative zero positive).
    """
    from onnx import TensorProto, helper

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])

    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["sum" if offset else "OUTPUT0"])]
    initializers = []
    if offset:
        nodes.append(helper.make_node("Add", ["sum", "offset"], ["OUTPUT0"]))
        initializers.append(helper.make_tensor("offset", TensorProto.FLOAT, [], [offset]))
    nodes.append(helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]))
    graph = helper.make_graph(
        nodes, "simple", [tensor("INPUT0"), tensor("INPUT1")], [tensor("OUTPUT0"), tensor("OUTPUT1")], initializers
    )
    return finish_model(graph)


def double_onnx(width: int = 4) -> bytes:
    """y = 2 * x, FP32 [batch, width] (dynamic batch: a config can be completed from it)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
    )
    return finish_model(graph)


def typed_identity_onnx() -> bytes:
    """IN_<T> -> OUT_<T> identity for every datatype in ``TYPED_DATATYPES``, shape [n]."""
    from onnx import TensorProto, helper

    onnx_types = {
        "FP16": TensorProto.FLOAT16,
        "FP32": TensorProto.FLOAT,
        "FP64": TensorProto.DOUBLE,
        "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "UINT8": TensorProto.UINT8,
        "BOOL": TensorProto.BOOL,
        "BYTES": TensorProto.STRING,
    }
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"IN_{t}"], [f"OUT_{t}"]) for t in onnx_types],
        "typed",
        [helper.make_tensor_value_info(f"IN_{t}", k, ["n"]) for t, k in onnx_types.items()],
        [helper.make_tensor_value_info(f"OUT_{t}", k, ["n"]) for t, k in onnx_types.items()],
    )
    return finish_model(graph)
