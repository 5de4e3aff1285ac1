"""Misbehaves as MODE says: raise, error, exit, crash, segfault, hang; params / bad-params answer
with response parameters; wait-cancel waits (1.5 s at most) until the client cancels; anything
else echoes."""

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
            if mode == "wait-cancel":
                deadline = time.monotonic() + 1.5
                while not request.is_cancelled() and time.monotonic() < deadline:
                    time.sleep(0.01)
                if request.is_cancelled():
                    pb_utils.Logger.log_info("saw is_cancelled()")
            out = [pb_utils.Tensor("OUT", np.array([f"{mode} from {os.getpid()}".encode()], dtype=np.object_))]
            if mode == "params":
                parameters = {"a_string": "text", "an_int": 7, "a_bool": True, "a_float": 0.5}
                responses.append(pb_utils.InferenceResponse(out, parameters=parameters))
            elif mode == "bad-params":
                responses.append(pb_utils.InferenceResponse(out, parameters={"a_list": [1, 2]}))
            else:
                responses.append(pb_utils.InferenceResponse(out))
        return responses
