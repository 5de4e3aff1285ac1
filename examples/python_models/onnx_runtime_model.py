"""A Triton Python model that serves the ``model.onnx`` next to it with ONNX Runtime, batched.

Drop it into a repository as ``<model>/<version>/model.py`` with the ONNX file as
``<model>/<version>/model.onnx`` and a ``config.pbtxt`` with ``backend: "python"`` naming the
ONNX model's inputs and outputs. Every ``execute`` call runs ONE session run over all the requests
the dynamic batcher gave it (their inputs concatenated along the batch dimension), then splits
the outputs back per request: the Python-backend way to get batching's speed-up.

It is written against Triton's documented Python backend API only, so the very same file runs in
the real Triton server and in shipyard (the benchmark serves it in both). ONNX Runtime uses one
intra-op and one inter-op thread (parameter ``intra_op_thread_count`` in config.pbtxt changes it).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        parameters = config.get("parameters", {})
        threads = int(parameters.get("intra_op_thread_count", {}).get("string_value", "1"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        self.batching = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        if not self.batching:
            return [self._respond(self._run(self._gather([request]))) for request in requests]
        feeds = self._gather(requests)
        sizes = [pb_utils.get_input_tensor_by_name(r, self.inputs[0]).as_numpy().shape[0] for r in requests]
        results = self._run(feeds)
        responses = []
        start = 0
        for size in sizes:
            responses.append(self._respond([array[start : start + size] for array in results]))
            start += size
        return responses

    def _gather(self, requests):
        feeds = {}
        for name in self.inputs:
            arrays = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            feeds[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        return feeds

    def _run(self, feeds):
        return self.session.run(self.outputs, feeds)

    def _respond(self, arrays):
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(name, np.ascontiguousarray(array))
                for name, array in zip(self.outputs, arrays, strict=True)
            ]
        )
