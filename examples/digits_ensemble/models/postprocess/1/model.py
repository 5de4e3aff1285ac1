"""Top-3 labels and softmax probabilities from the digits CNN's logits."""

import numpy as np
import triton_python_backend_utils as pb_utils

TOP_K = 3
LABELS = np.array([str(digit).encode() for digit in range(10)], dtype=np.object_)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy().astype(np.float64)
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)
            order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
            scores = np.take_along_axis(probabilities, order, axis=1).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("LABELS", LABELS[order]), pb_utils.Tensor("SCORES", scores)]
                )
            )
        return responses
