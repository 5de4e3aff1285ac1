"""Misbehaves as MODE says: raise, error, exit, crash, segfault, hang; anything else echoes."""

import ctypes
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            if mode == "raise":
                raise ValueError("the model refused this input")
            if mode == "exit":
                sys.exit(3)
            if mode == "crash":
                os._exit(7)
            if mode == "segfault":
                ctypes.string_at(0)
            if mode == "hang":
                time.sleep(3600)
            if mode == "error":
                error = pb_utils.TritonError("MODE 'error' is not accepted", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            out = np.array([f"{mode} from {os.getpid()}".encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        return responses
