"""Answers each request on its own: Y = X + 1, N = the request's own row count, only the
requested outputs. X[0, 0] picks a special answer: -1 an error naming the request id, -2 waits
(1.5 s at most) for the client to cancel, -3 Y as FP64, -4 response parameters, -5 rows that do
not match the request's, -6 waits (10 s at most) until the test writes ``<request id>.release`` beside
this file. Logs each execute's request count (the fast path still hands the list)."""

import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        pb_utils.Logger.log_info(f"execute of {len(requests)} requests")
        return [self._one(request) for request in requests]

    def _one(self, request):
        x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
        mode = int(x[0, 0])
        if mode == -1:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"request {request.request_id()!r} failed"))
        if mode == -6:
            release = Path(__file__).parent / f"{request.request_id()}.release"
            deadline = time.monotonic() + 10.0
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        if mode == -2:
            deadline = time.monotonic() + 1.5
            while not request.is_cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            if request.is_cancelled():
                pb_utils.Logger.log_info(f"request {request.request_id()} saw is_cancelled()")
        y = (x + 1).astype(np.float64 if mode == -3 else np.float32)
        rows = x.shape[0] + (1 if mode == -5 else 0)
        tensors = {"Y": y if mode != -5 else np.concatenate([y, y[:1]]), "N": np.full((rows, 1), x.shape[0], np.int32)}
        wanted = request.requested_output_names()
        out = [pb_utils.Tensor(name, tensors[name]) for name in ("Y", "N") if name in wanted]
        parameters = {"mode": "params", "rows": int(x.shape[0])} if mode == -4 else None
        return pb_utils.InferenceResponse(out, parameters=parameters)
