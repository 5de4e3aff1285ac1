"""From ``models:/NAME@ALIAS`` (or ``/VERSION``) to the published model that serves it, and the scoring run
logged back to MLflow.

Public: ``PublishedModel``, ``resolve_published(model_uri, tracking_uri) -> PublishedModel``,
``log_scoring(summary, model_uri, tracking_uri, experiment) -> run_id``.

The publish step records ``shipyard.published.uri`` (``<repository>/<model>/<version>``) on the model
version; that is how a registry alias finds the served model name, its version and its repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shipyard.components.score.errors import ScoreError

SCORING_EXPERIMENT = "shipyard-scoring"


@dataclass(frozen=True)
class PublishedModel:
    model_uri: str  # models:/NAME/VERSION (the alias resolved, so every step agrees)
    repository: str  # where the version was published (a path or an fsspec URL)
    name: str  # the model's name in the repository and on the server
    version: int  # its version there


def _split_version_uri(uri: str) -> tuple[str, str, int]:
    """``<repository>/<model>/<version>`` -> (repository, model, version); ``file://`` becomes a path."""
    from urllib.parse import unquote, urlsplit

    text = uri.rstrip("/")
    if text.startswith("file://"):
        text = unquote(urlsplit(text).path)
    repository, _, rest = text.rpartition("/")
    repository, _, name = repository.rpartition("/")
    rest_ok = rest.isdigit()
    if not repository or not name or not rest_ok:
        raise ScoreError(f"published URI {uri!r} is not <repository>/<model>/<version>")
    return repository, name, int(rest)


def resolve_published(model_uri: str, tracking_uri: str | None = None) -> PublishedModel:
    """The published model behind a registry URI.

    Raises: ScoreError (unknown model, version or alias; a version that was never published).
    """
    from shipyard.registry import RegistryError, get_version
    from shipyard.registry import lineage as L

    try:
        version = get_version(model_uri, tracking_uri)
    except RegistryError as exc:
        raise ScoreError(str(exc)) from None
    published = (version.tags or {}).get(L.PUBLISHED_URI)
    fixed = f"models:/{version.name}/{version.version}"
    if not published:
        raise ScoreError(
            f"{model_uri} ({fixed}) has no {L.PUBLISHED_URI} tag: it was never published to a model repository; "
            "run shipyard publish (or the deploy pipeline) first"
        )
    repository, name, number = _split_version_uri(published)
    return PublishedModel(fixed, repository, name, number)


def log_scoring(
    summary: Mapping[str, Any], model_uri: str, tracking_uri: str | None = None,
    experiment: str = SCORING_EXPERIMENT,
) -> str:  # fmt: skip
    """Log a scoring run to MLflow: the output location and row count (and the rest of the summary).

    Returns the MLflow run id.
    """
    from shipyard.registry import ensure_experiment, get_client

    client = get_client(tracking_uri)
    run = client.create_run(ensure_experiment(experiment, tracking_uri), tags={
        "shipyard.scoring.output": str(summary["output"]), "shipyard.scoring.model_uri": model_uri,
        "mlflow.runName": f"score {summary.get('model')} v{summary.get('model_version')}",
    })  # fmt: skip
    run_id = str(run.info.run_id)
    for key in ("output", "model", "model_version", "target", "batch_size", "priority"):
        client.log_param(run_id, key, str(summary.get(key)))
    for key in ("rows", "rows_scored", "rows_resumed", "seconds", "rows_per_s", "retries"):
        if isinstance(summary.get(key), (int, float)):
            client.log_metric(run_id, key, float(summary[key]))
    client.set_terminated(run_id)
    return run_id
