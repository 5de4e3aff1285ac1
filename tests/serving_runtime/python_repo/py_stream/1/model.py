"""Decoupled: answers N with N responses OUT = 0..N-1, from a thread after execute returned,
then the final flag alone. N < 0 sends an error response; a cancelled request stops early."""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            sender = request.get_response_sender()
            threading.Thread(target=self._send, args=(sender, count)).start()
        return None

    def _send(self, sender, count):
        if count < 0:
            error = pb_utils.TritonError(f"N must be >= 0, got {count}")
            sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        for i in range(count):
            if sender.is_cancelled():
                pb_utils.Logger.log_info(f"cancelled after {i} responses")
                break
            time.sleep(0.01)
            out = [pb_utils.Tensor("OUT", np.array([i], dtype=np.int32))]
            sender.send(pb_utils.InferenceResponse(out, parameters={"index": i}))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
