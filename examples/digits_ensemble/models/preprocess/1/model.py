"""Decode image bytes and shape them as the digits CNN wants: one 8x8 grey channel in [0, 1]."""

import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


def pixels(data):
    """[1, 8, 8] float32 from one encoded image (any size and mode Pillow reads)."""
    image = Image.open(io.BytesIO(data)).convert("L").resize((8, 8), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) / 255.0)[None]


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                batch = np.stack([pixels(bytes(item)) for item in images.reshape(-1)])
            except Exception as exc:  # a bad image fails its own request only
                error = pb_utils.TritonError(f"IMAGE is not an image Pillow can read: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", batch)]))
        return responses
