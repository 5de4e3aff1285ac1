"""Where MLflow lives: the tracking URI, the experiment and its fixed artifact location.

Embedded default (no server): ``sqlite:///<home>/mlflow.db`` with artifacts under ``<home>/artifacts``,
where ``<home>`` is ``$SHIPYARD_MLFLOW_HOME`` or ``./.shipyard/mlflow``. A tracking URI given
explicitly (or ``$MLFLOW_TRACKING_URI``) wins; against an ``http(s)://`` server the server chooses
the artifact location.

Public functions:

- ``resolve_tracking_uri(tracking_uri: str | None = None) -> str``
- ``default_home() -> Path``
- ``get_client(tracking_uri: str | None = None) -> mlflow.MlflowClient`` (also sets mlflow's global URI)
- ``ensure_experiment(name: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None) -> str`` (experiment id)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_EXPERIMENT = "shipyard"


def default_home() -> Path:
    """``$SHIPYARD_MLFLOW_HOME`` or ``./.shipyard/mlflow`` (absolute)."""
    return Path(os.environ.get("SHIPYARD_MLFLOW_HOME") or Path.cwd() / ".shipyard" / "mlflow").resolve()


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking URI to use: the argument, else ``$MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    if tracking_uri:
        return tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def get_client(tracking_uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` for the resolved URI; also points mlflow's fluent API (and registry) at it."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str = DEFAULT_EXPERIMENT, tracking_uri: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (with the fixed artifact location on sqlite)."""
    client = get_client(tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    uri = resolve_tracking_uri(tracking_uri)
    artifact_location = None
    if uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///") :])
        artifact_location = (db_path.parent / "artifacts").resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except Exception:
        # another process created it between our lookup and create
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)
