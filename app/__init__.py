"""shipyard: take a trained deep-learning model to production on Kubernetes.

Subpackages (each installed from its own top-level folder of the repository):

- ``shipyard.registry``         MLflow model versions, aliases, lineage
- ``shipyard.components``       export / optimize / validate / publish / deploy, one stage layer (stages.py)
- ``shipyard.pipelines``        Kubeflow pipelines and their KFP components, over the stage layer
- ``shipyard.serving_runtime``  the custom KServe runtime (Triton-layout repository, dynamic batching)
- ``shipyard.zoo``              models built by code for tests, demos and benchmarks
"""

__version__ = "0.1.0"
