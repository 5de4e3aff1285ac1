"""Calls TARGET through BLS: "py_add" (exec), "py_add_async" (async_exec, two calls at once),
"simple" (the ONNX model), "py_stream" (a decoupled model, summing its responses), or an unknown
model, whose error comes back in ERROR."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


def _request(target, x):
    if target == "simple":
        inputs = [pb_utils.Tensor("INPUT0", x.reshape(1, -1).repeat(4, axis=1)[:, :16])]
        inputs.append(pb_utils.Tensor("INPUT1", np.ones((1, 16), dtype=np.float32)))
        return pb_utils.InferenceRequest(model_name="simple", inputs=inputs, requested_output_names=["OUTPUT0"])
    if target == "py_stream":
        inputs = [pb_utils.Tensor("N", np.array([3], dtype=np.int32))]
        return pb_utils.InferenceRequest(model_name="py_stream", inputs=inputs, requested_output_names=["OUT"])
    inputs = [pb_utils.Tensor("INPUT0", x.reshape(1, 4)), pb_utils.Tensor("INPUT1", x.reshape(1, 4))]
    return pb_utils.InferenceRequest(
        model_name=target.removesuffix("_async"), inputs=inputs, requested_output_names=["OUTPUT0"]
    )


def _answer(response, name):
    if response.has_error():
        return np.zeros(1, dtype=np.float32), response.error().message()
    return pb_utils.get_output_tensor_by_name(response, name).as_numpy().reshape(-1), ""


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            target = pb_utils.get_input_tensor_by_name(request, "TARGET").as_numpy()[0].decode()
            if target.endswith("_async"):
                first, second = await asyncio.gather(
                    _request(target, x).async_exec(), _request(target, x * 10).async_exec()
                )
                a, error = _answer(first, "OUTPUT0")
                b, _ = _answer(second, "OUTPUT0")
                total = np.concatenate([a, b])
            elif target == "py_stream":
                parts = [_answer(r, "OUT")[0] for r in _request(target, x).exec(decoupled=True)]
                total, error = np.concatenate(parts).astype(np.float32), ""
            else:
                total, error = _answer(_request(target, x).exec(), "OUTPUT0")
            outputs = [
                pb_utils.Tensor("SUM", total.astype(np.float32)),
                pb_utils.Tensor("ERROR", np.array([error.encode()], dtype=np.object_)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
