"""What the pipelines need on a Kubernetes cluster: the component image, credentials from Secrets.

- ``compile_pipeline(pipeline, output, image=None)``: KFP v2 YAML with every component's image set
  to ``image`` (default ``PIPELINE_IMAGE``, built from ``pipelines/Dockerfile``).
- ``use_cluster_secrets()``: called inside a pipeline function built with ``cluster=True``; every task
  gets the MLflow and object-store credentials as environment variables from the Kubernetes Secrets
  ``MLFLOW_SECRET`` and ``STORAGE_SECRET`` (through kfp-kubernetes; each key optional, so a cluster
  holds only the keys its stores need). The keys are the clients' standard variable names.
- The service account a run's pods use is chosen at submission (``shipyard pipeline submit
  --service-account``); ``serving_runtime/manifests/rbac.yaml`` defines one with exactly the verbs
  the deploy step uses.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

MLFLOW_SECRET = "shipyard-mlflow"
STORAGE_SECRET = "shipyard-storage"
SERVICE_ACCOUNT = "shipyard-pipeline"
MLFLOW_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
)
STORAGE_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
)


def use_cluster_secrets() -> None:
    """Give every task of the pipeline being built the credentials Secrets as optional env vars.

    Call at the end of a ``@dsl.pipeline`` function body (the tasks exist by then).
    """
    from kfp import kubernetes
    from kfp.dsl import pipeline_context

    pipeline = pipeline_context.Pipeline.get_default_pipeline()
    if pipeline is None:  # pragma: no cover - only called inside a pipeline body
        return
    for task in pipeline.tasks.values():
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_KEYS}, optional=True)
        kubernetes.use_secret_as_env(task, STORAGE_SECRET, {k: k for k in STORAGE_KEYS}, optional=True)


def set_image(documents: list[dict[str, Any]], image: str) -> int:
    """Point every executor of a compiled pipeline at ``image``; returns how many were changed."""
    changed = 0
    for doc in documents:
        executors = (doc.get("deploymentSpec") or {}).get("executors") or {}
        for executor in executors.values():
            container = executor.get("container")
            if container is not None and "image" in container:
                container["image"] = image
                changed += 1
    return changed


def compile_pipeline(pipeline: Any, output: str | Path, image: str | None = None) -> Path:
    """Compile ``pipeline`` to KFP v2 YAML at ``output``, with its components on ``image`` when given.

    Raises: ValueError for an empty image name.
    """
    from kfp import compiler

    output = Path(output)
    compiler.Compiler().compile(pipeline, str(output))
    if image is not None:
        if not image.strip() or any(c.isspace() for c in image):
            raise ValueError(f"--image {image!r}: give an image reference such as ghcr.io/you/shipyard:0.1.0")
        documents = [d for d in yaml.safe_load_all(output.read_text()) if d]
        set_image(documents, image)
        output.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return output


def compile_to_temp(pipeline: Any, image: str | None = None) -> Path:
    """``compile_pipeline`` into a new temporary file (the caller removes it)."""
    handle = tempfile.NamedTemporaryFile(prefix="shipyard-pipeline-", suffix=".yaml", delete=False)
    handle.close()
    return compile_pipeline(pipeline, handle.name, image)
