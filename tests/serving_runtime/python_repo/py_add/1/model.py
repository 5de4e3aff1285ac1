"""OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; BATCH = how many requests execute got."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            batch = np.full((a.shape[0], 1), len(requests), dtype=np.int32)
            outputs = [
                pb_utils.Tensor("OUTPUT0", a + b),
                pb_utils.Tensor("OUTPUT1", a - b),
                pb_utils.Tensor("BATCH", batch),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
