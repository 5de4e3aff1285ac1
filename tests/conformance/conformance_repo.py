"""The model repositories the conformance suite serves with the real Triton and with shipyard.

Every model is a Python model (``model.py``, Triton's API) with one ``config.pbtxt``. Triton serves
them as they are. shipyard serves the very same directories when it has a Python backend; until
then it serves, for each Python model, an ONNX model computing the same thing bit for bit
(elementwise add/subtract, identity) under the same config, with only the backend line changed.
"""

from __future__ import annotations

from pathlib import Path

from onnx_models import simple_onnx, typed_identity_onnx

SIMPLE_CONFIG = """
backend: "python"
max_batch_size: 8
version_policy: { all { } }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

SIMPLE_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """OUTPUT0 = INPUT0 + INPUT1 + OFFSET, OUTPUT1 = INPUT0 - INPUT1 (FP32, batched)."""

    OFFSET = {offset}

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            total = a + b
            if self.OFFSET:
                total = total + a.dtype.type(self.OFFSET)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total), pb_utils.Tensor("OUTPUT1", a - b)])
            )
        return responses
'''

# Identity per datatype, no batching, one variable dimension.
TYPED = {
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8",
    "BOOL": "TYPE_BOOL",
    "BYTES": "TYPE_STRING",
}


def typed_config() -> str:
    inputs = ",\n".join(f'  {{ name: "IN_{t}" data_type: {c} dims: [ -1 ] }}' for t, c in TYPED.items())
    outputs = ",\n".join(f'  {{ name: "OUT_{t}" data_type: {c} dims: [ -1 ] }}' for t, c in TYPED.items())
    return f'backend: "python"\nmax_batch_size: 0\ninput [\n{inputs}\n]\noutput [\n{outputs}\n]\n'


TYPED_PY = '''
import triton_python_backend_utils as pb_utils

TYPES = {types!r}


class TritonPythonModel:
    """OUT_<T> = IN_<T> for every datatype."""

    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = []
            for t in TYPES:
                tensor = pb_utils.get_input_tensor_by_name(request, "IN_" + t)
                outputs.append(pb_utils.Tensor("OUT_" + t, tensor.as_numpy()))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
'''

# Two simple steps: S = A + B, D = A - B; then OUT_SUM = S + D = 2A, OUT_DIFF = S - D = 2B.
ENSEMBLE_CONFIG = """
platform: "ensemble"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "B" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUT_SUM" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUT_DIFF" data_type: TYPE_FP32 dims: [ 16 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "simple"
      model_version: 1
      input_map [ { key: "INPUT0" value: "A" }, { key: "INPUT1" value: "B" } ]
      output_map [ { key: "OUTPUT0" value: "S" }, { key: "OUTPUT1" value: "D" } ]
    },
    {
      model_name: "simple"
      model_version: 1
      input_map [ { key: "INPUT0" value: "S" }, { key: "INPUT1" value: "D" } ]
      output_map [ { key: "OUTPUT0" value: "OUT_SUM" }, { key: "OUTPUT1" value: "OUT_DIFF" } ]
    }
  ]
}
"""

MODELS = ("simple", "typed", "pipeline")


def python_backend_available() -> bool:
    """Whether shipyard serves ``backend: "python"`` (the Python backend has landed)."""
    from shipyard.serving_runtime.backends.registry import BACKEND_NAMES

    return "python" in BACKEND_NAMES


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def build_repository(root: Path, python: bool) -> Path:
    """Write the repository under ``root``: Python models when ``python``, else the ONNX twins.

    ``simple`` has versions 1 (offset 0) and 2 (offset 1), policy all; ``typed`` is unbatched;
    ``pipeline`` is an ensemble of two ``simple`` version 1 steps.
    """
    for version, offset in ((1, 0.0), (2, 1.0)):
        if python:
            _write(root / "simple" / str(version) / "model.py", SIMPLE_PY.format(offset=offset))
        else:
            _write(root / "simple" / str(version) / "model.onnx", simple_onnx(offset))
    if python:
        _write(root / "typed" / "1" / "model.py", TYPED_PY.format(types=list(TYPED)))
    else:
        _write(root / "typed" / "1" / "model.onnx", typed_identity_onnx())
    backend = 'backend: "python"' if python else 'backend: "onnxruntime"'
    _write(root / "simple" / "config.pbtxt", SIMPLE_CONFIG.replace('backend: "python"', backend))
    _write(root / "typed" / "config.pbtxt", typed_config().replace('backend: "python"', backend))
    (root / "pipeline" / "1").mkdir(parents=True, exist_ok=True)
    _write(root / "pipeline" / "config.pbtxt", ENSEMBLE_CONFIG)
    return root


# ---------------------------------------------------------------------------------------------
# Python-backend behaviours (served only where shipyard has the Python backend): errors a model
# raises or returns, BLS calls into another model, decoupled responses.
# ---------------------------------------------------------------------------------------------

ERRORS_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "CODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

ERRORS_PY = '''
import triton_python_backend_utils as pb_utils

CODES = ["UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS", "CANCELLED"]


class TritonPythonModel:
    """CODE -1: raise; 0..7: answer with TritonError(msg, TritonError.<that code>); 100: TritonError(msg)
    without a code; -2: an output that is not in the config; else OUT = CODE."""

    def execute(self, requests):
        responses = []
        for request in requests:
            code = int(pb_utils.get_input_tensor_by_name(request, "CODE").as_numpy()[0])
            if code == -1:
                raise RuntimeError("the model raised on purpose")
            if 0 <= code <= 7 or code == 100:
                if code == 100:
                    error = pb_utils.TritonError("error without a code")
                else:
                    name = CODES[code]
                    error = pb_utils.TritonError(f"error with code {name}", getattr(pb_utils.TritonError, name))
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            elif code == -2:
                tensor = pb_utils.get_input_tensor_by_name(request, "CODE").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("NOT_IN_CONFIG", tensor)]))
            else:
                tensor = pb_utils.get_input_tensor_by_name(request, "CODE").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", tensor)]))
        return responses
'''

CANCEL_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "MODE" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "SEEN" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

CANCEL_PY = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """MODE 0: wait (5 s at most) until request.is_cancelled(); any MODE answers SEEN, how many
    requests so far saw their cancellation."""

    def initialize(self, args):
        self.seen = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            if int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0]) == 0:
                deadline = time.monotonic() + 5
                while not request.is_cancelled() and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.seen += int(request.is_cancelled())
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", np.array([self.seen], np.int32))]))
        return responses
'''

BLS_CONFIG = """
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "TARGET" data_type: TYPE_STRING dims: [ 1 ] }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""

BLS_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Calls the model named by TARGET (BLS) with INPUT0/INPUT1; returns its OUTPUT0, or its error."""

    def execute(self, requests):
        responses = []
        for request in requests:
            target = pb_utils.get_input_tensor_by_name(request, "TARGET").as_numpy().reshape(-1)[0].decode()
            call = pb_utils.InferenceRequest(
                model_name=target,
                requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.get_input_tensor_by_name(request, n) for n in ("INPUT0", "INPUT1")],
            )
            result = call.exec()
            if result.has_error():
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=result.error()))
                continue
            out = pb_utils.get_output_tensor_by_name(result, "OUTPUT0")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out.as_numpy())]))
        return responses
'''

DECOUPLED_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "I" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

DECOUPLED_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """N responses I = 0..N-1 on one request, then the final flag alone."""

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            for i in range(count):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([i], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

PYTHON_ONLY = {
    "errors": (ERRORS_CONFIG, ERRORS_PY),
    "bls": (BLS_CONFIG, BLS_PY),
    "decoupled": (DECOUPLED_CONFIG, DECOUPLED_PY),
    "cancel": (CANCEL_CONFIG, CANCEL_PY),
}


def add_python_behaviours(root: Path) -> Path:
    """Add the Python-only models (errors, bls, decoupled, cancel) to the repository at ``root``."""
    for name, (config, code) in PYTHON_ONLY.items():
        _write(root / name / "config.pbtxt", config)
        _write(root / name / "1" / "model.py", code)
    return root
