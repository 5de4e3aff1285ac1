"""The shipyard serving runtime: a custom KServe runtime for a Triton-layout model repository.

This package must import and run with only the ``serve`` extra installed: no mlflow, kfp or
torch at import time (torch is imported lazily by the PyTorch backend only).
"""
