"""Triton's Python backend: ``model.py`` with ``TritonPythonModel``, each instance in its own process.

``backend`` (the registry's entry), ``instance`` and ``process`` (the server's side of one
instance), ``stub`` (the model's process), ``pb_utils`` (``triton_python_backend_utils`` as the
model imports it), ``shm`` and ``ipc`` (the transport), ``bls`` (models calling models).
"""
