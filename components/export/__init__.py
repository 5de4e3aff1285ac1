"""torch -> ONNX with a dynamic batch axis, checked with the ONNX checker and against torch.

- ``export_onnx(module, input_example, output_path, *, max_batch_size=64, input_names=None, output_names=None,
  opset=None, atol=1e-4, rtol=1e-3) -> ExportResult``
- ``export_registered(model_uri, output_path, *, max_batch_size=64, input_names=None, output_names=None,
  tracking_uri=None, record_lineage=True) -> ExportResult``: load the registered PyTorch model and its input
  example from MLflow, export, and tag the version (``shipyard.onnx.sha256``, ...)
"""

from shipyard.components.export.onnx_export import ExportResult, export_onnx, export_registered

__all__ = ["ExportResult", "export_onnx", "export_registered"]
