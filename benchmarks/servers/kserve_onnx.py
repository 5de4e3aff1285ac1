"""The stock KServe SDK runtime without batching: a ``kserve.Model`` running the same ONNX session.

This is what a KServe user writes by following the SDK's custom-model guide: a synchronous
``predict`` on ``InferRequest``/``InferResponse``, served by ``kserve.ModelServer`` (REST and gRPC).
ONNX Runtime runs with one intra-op thread, as everywhere in the benchmark. Per-request latency
logging is switched off (it would only make this reference slower).

Usage: ``python -m benchmarks.servers.kserve_onnx --rest-port P --grpc-port Q --model NAME=PATH ...``

This module imports kserve, so it must never import tritonclient.grpc (their protos clash).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rest-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of an ONNX file")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when it is imported

    import kserve
    import numpy as np
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        """One ONNX model; ``predict`` runs the session on the request's inputs."""

        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.session: Any = None
            self.output_names: list[str] = []
            self.load()

        def load(self) -> bool:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.ready = True
            return True

        def predict(self, payload: InferRequest, headers: Any = None, response_headers: Any = None) -> InferResponse:
            feeds = {inp.name: inp.as_numpy() for inp in payload.inputs}
            results = self.session.run(self.output_names, feeds)
            outputs = [
                InferOutput(name=name, shape=list(value.shape), datatype="FP32", data=np.asarray(value))
                for name, value in zip(self.output_names, results, strict=True)
            ]
            return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or "bench")

    models = []
    for item in args.model:
        name, _, path = item.partition("=")
        models.append(OnnxModel(name, path))
    kserve.ModelServer(http_port=args.rest_port, grpc_port=args.grpc_port, enable_latency_logging=False).start(models)


if __name__ == "__main__":
    main()
