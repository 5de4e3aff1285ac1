"""Models built by code, shared by tests, the demo and the benchmarks. Nothing is downloaded.

- ``digits_cnn``: a small CNN trained in seconds on scikit-learn's bundled digits data set
  (real data, 8x8 grey images, 10 classes); input ``input`` FP32 [batch,1,8,8] -> ``logits`` [batch,10].
- ``wide_mlp``: 512->2048->2048->2048->512, random weights; ``input`` [batch,512] -> ``output`` [batch,512].
  Batching pays ~10x on CPU, as on a GPU.
- ``resnet_cnn``: a ResNet-style CNN on 3x64x64, random weights; ``input`` -> ``logits`` [batch,10].
- ``add_sub``: Triton's "simple" model: ``INPUT0``, ``INPUT1`` FP32 [batch,16] -> ``OUTPUT0`` = a+b,
  ``OUTPUT1`` = a-b. Pure overhead; built with onnx.helper, no torch needed.

ONNX files are cached under ``$SHIPYARD_CACHE`` (default ``~/.cache/shipyard``)``/zoo``; the cache key
includes a version per model, so a changed definition is rebuilt. Writes are atomic, so parallel
test processes may build the same model at once.

Public functions: ``onnx_model(name)``, ``torch_model(name)``, ``digits_data()``, ``MODEL_NAMES``.
"""

from shipyard.zoo.api import MODEL_NAMES, DigitsData, cache_dir, digits_data, onnx_model, torch_model

__all__ = ["MODEL_NAMES", "DigitsData", "cache_dir", "digits_data", "onnx_model", "torch_model"]
