"""Reference servers, each started as its own process by the benchmark.

Each module has a ``main()`` run with ``python -m benchmarks.servers.<name>``. They import only what
their server needs: ``kserve_onnx`` imports kserve (never tritonclient.grpc), ``mlserver_onnx`` runs in
MLServer's own virtual environment, ``echo`` imports tritonclient.grpc.
"""
