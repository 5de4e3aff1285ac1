"""The repository of the sequence / response cache / shared-memory conformance cases.

Triton serves Python models (Triton's API); shipyard serves ONNX twins that compute the same thing
bit for bit under the same config (backend line changed). The accumulator differs in one more way:
Triton's Python model keeps its running sums itself (keyed by CORRID), shipyard's ONNX twin keeps
them in implicit state (``state [...]``), so the comparison also holds the server's state handling
against a model that does it by hand.
"""

from __future__ import annotations

from pathlib import Path

ACCUM_CONFIG = """
{backend}
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "END_OUT" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "CORRID_OUT" data_type: TYPE_UINT64 dims: [ 1 ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: 20000000
  {strategy}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
  {state}
}}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

STATE = """state [ {
    input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ]
    initial_state { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "zero" }
  } ]"""

ACCUM_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """OUTPUT = running sum of INPUT over the sequence (reset at START), per CORRID."""

    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            value, start, end = get("INPUT"), get("START"), get("END")
            ready, corrid = get("READY"), get("CORRID")
            key = int(corrid.reshape(-1)[0])
            total = np.zeros_like(value)
            if ready.reshape(-1)[0] != 0:
                previous = 0.0 if start.reshape(-1)[0] != 0 else self.sums.get(key, 0.0)
                total = (np.float32(previous) + value).astype(np.float32)
                self.sums[key] = float(total.reshape(-1)[0])
                if end.reshape(-1)[0] != 0:
                    self.sums.pop(key, None)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", total),
                pb_utils.Tensor("END_OUT", end.astype(np.float32)),
                pb_utils.Tensor("CORRID_OUT", corrid.astype(np.uint64)),
            ]))
        return responses
'''

ADD_CONFIG = """
{backend}
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
{cache}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

ADD_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]
            ))
        return responses
"""


def accumulator_onnx() -> bytes:
    """The ONNX twin: the zoo's accumulator, its running sum in implicit state."""
    from shipyard.zoo.onnx_models import accumulator_model

    return bytes(accumulator_model().SerializeToString())


def add_sub_onnx() -> bytes:
    from shipyard.zoo.onnx_models import add_sub_model

    return bytes(add_sub_model().SerializeToString())


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def build_stateful_repository(root: Path, python: bool) -> Path:
    """``accum`` and ``accum_oldest`` (sequences, direct and oldest), ``cached`` (response cache on),
    ``add_sub`` (for shared memory)."""
    backend = 'backend: "python"' if python else 'backend: "onnxruntime"'
    for name, cache in (("cached", "response_cache { enable: true }"), ("add_sub", "")):
        _write(root / name / "config.pbtxt", ADD_CONFIG.format(backend=backend, cache=cache))
        if python:
            _write(root / name / "1" / "model.py", ADD_PY)
        else:
            _write(root / name / "1" / "model.onnx", add_sub_onnx())
    for name, strategy in (("accum", "direct { }"), ("accum_oldest", "oldest { max_candidate_sequences: 4 }")):
        state = "" if python else STATE
        _write(root / name / "config.pbtxt", ACCUM_CONFIG.format(backend=backend, state=state, strategy=strategy))
        if python:
            _write(root / name / "1" / "model.py", ACCUM_PY)
        else:
            _write(root / name / "1" / "model.onnx", accumulator_onnx())
    return root
