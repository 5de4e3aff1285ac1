"""Models written directly in ONNX (no torch needed)."""

from __future__ import annotations

from typing import Any


def add_sub_model(width: int = 16) -> Any:
    """Triton's "simple" model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, FP32 [batch, width]."""
    from onnx import TensorProto, checker, helper

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [tensor("INPUT0"), tensor("INPUT1")],
        [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="shipyard.zoo")
    model.ir_version = 8
    checker.check_model(model)
    return model


def accumulator_model(corrid_string: bool = False) -> Any:
    """A stateful model for Triton's sequence batcher with implicit state: ``OUTPUT = (STATE_IN *
    (1 - START) + INPUT) * READY``, ``STATE_OUT = OUTPUT`` (the running sum of the sequence),
    ``CORRID_OUT = CORRID``, ``END_OUT = END``. FP32 [batch, 1]; CORRID UINT64, or STRING."""
    from onnx import TensorProto, checker, helper

    def fp32(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1])

    corrid = helper.make_tensor_value_info(
        "CORRID", TensorProto.STRING if corrid_string else TensorProto.UINT64, ["batch", 1]
    )
    corrid_out = helper.make_tensor_value_info(
        "CORRID_OUT", TensorProto.STRING if corrid_string else TensorProto.UINT64, ["batch", 1]
    )
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["one", "START"], ["keep"]),
            helper.make_node("Mul", ["STATE_IN", "keep"], ["kept"]),
            helper.make_node("Add", ["kept", "INPUT"], ["sum"]),
            helper.make_node("Mul", ["sum", "READY"], ["OUTPUT"]),
            helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
            helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]),
            helper.make_node("Identity", ["END"], ["END_OUT"]),
        ],
        "accumulator",
        [fp32("INPUT"), fp32("START"), fp32("END"), fp32("READY"), fp32("STATE_IN"), corrid],
        [fp32("OUTPUT"), fp32("STATE_OUT"), fp32("END_OUT"), corrid_out],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="shipyard.zoo")
    model.ir_version = 8
    checker.check_model(model)
    return model


def accumulator_config(
    name: str,
    corrid: str = "TYPE_UINT64",
    strategy: str = "direct { }",
    idle_us: int = 5_000_000,
    max_batch_size: int = 8,
    instances: int = 1,
) -> str:
    """The ``config.pbtxt`` that serves ``accumulator_model`` with Triton's sequence batcher."""
    fp32 = "fp32_false_true: [ 0, 1 ]"
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "END_OUT" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "CORRID_OUT" data_type: {corrid} dims: [ 1 ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  {strategy}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START {fp32} }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END {fp32} }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY {fp32} }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
  state [ {{
    input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ]
    initial_state {{ data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "zero" }}
  }} ]
}}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""


def image_mean_model() -> Any:
    """Per-channel means of an image batch: ``images`` FP32 [batch,3,224,224] -> ``means`` [batch,3].
    Reads every byte of its input and computes little: a probe of how tensors reach the server."""
    from onnx import TensorProto, checker, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0)],
        "image_mean",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("means", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="shipyard.zoo")
    model.ir_version = 8
    checker.check_model(model)
    return model
