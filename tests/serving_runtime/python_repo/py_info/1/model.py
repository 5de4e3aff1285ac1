"""INFO = JSON of initialize's args, the request's parameters and requested outputs; the config
is completed by auto_complete_config (max_batch_size and dynamic batching)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        auto_complete_model_config.add_output({"name": "EXTRA", "data_type": "TYPE_INT64", "dims": [1]})
        return auto_complete_model_config

    def initialize(self, args):
        self.args = args
        pb_utils.Logger.log_info(f"initialized {args['model_instance_name']}")

    def execute(self, requests):
        responses = []
        for request in requests:
            info = {
                "args": self.args,
                "parameters": json.loads(request.parameters()),
                "requested": request.requested_output_names(),
                "cancelled": request.is_cancelled(),
                "config_name": pb_utils.get_model_config()["name"],
                "fp32": str(pb_utils.triton_string_to_numpy("TYPE_FP32")),
                "code": pb_utils.numpy_to_triton_type(np.float32),
            }
            batch = pb_utils.get_input_tensor_by_name(request, "X").as_numpy().shape[0]
            outputs = [
                pb_utils.Tensor("INFO", np.array([[json.dumps(info).encode()]] * batch, dtype=np.object_)),
                pb_utils.Tensor("EXTRA", np.full((batch, 1), 7, dtype=np.int64)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
