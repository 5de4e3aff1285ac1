"""A model that crashes its process (os._exit) when asked to: the isolation benchmark's victim.

x[0] > 0 kills the process running this model without a word; otherwise y = x.
"""

import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if float(x.reshape(-1)[0]) > 0:
                os._exit(3)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return responses
