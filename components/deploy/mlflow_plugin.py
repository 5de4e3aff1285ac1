"""MLflow deployments plugin, target ``shipyard`` (the local target: no cluster needed); ``shipyard:/kserve`` is
KServe (``components/deploy/mlflow_kserve.py``, whose docstring ``mlflow deployments help`` also prints).

    mlflow deployments create -t shipyard -m models:/digits@champion --name digits -C data_path=heldout.npz
    mlflow deployments predict -t shipyard --name digits --input-path input.json
    mlflow deployments get|list|update|delete -t shipyard ...

``create`` runs optimize -> validate -> publish (``shipyard.components.flow.deploy_flow``) into the
deployment's own model repository, then starts the runtime on it; ``update`` publishes the new
model version and restarts the runtime on the repository; ``delete`` stops it. Config keys (``-C``):
``repository``, ``http_port``, ``grpc_port``, ``data_path`` (held-out .npz; default: the logged input
example), ``optimize_target``, ``precision``, ``max_batch_size``, ``tracking_uri``, ``timeout_s``. Deployments are
recorded under ``$SHIPYARD_HOME/deployments`` (default ``~/.shipyard``), where ``get``/``list`` find them.

``predict --input-path FILE.json`` takes, for a model with one input, ``{"inputs": [ROW, ROW, ...]}`` or
a bare list of rows ``[ROW, ...]`` (each ROW one sample, e.g. ``[0.1, 0.2, 0.3, 0.4]``: the batch is
the number of rows); for several inputs, ``{"INPUT_A": [ROW, ...], "INPUT_B": [ROW, ...]}``. Values are
converted to the served input's datatype. Errors end as one line (exit code 2 for a user error).
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np
from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException

from shipyard.components.deploy.local import LocalTarget
from shipyard.components.deploy.spec import GRPC_PORT, HTTP_PORT

TARGET = "shipyard"
_INT_KEYS = ("http_port", "grpc_port", "max_batch_size")


class PluginError(MlflowException, click.ClickException):  # type: ignore[misc]
    """An error of this plugin: an MlflowException for Python callers, one line and exit 2 in the mlflow CLI."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2) -> None:
        MlflowException.__init__(self, message)
        self.exit_code = exit_code  # type: ignore[misc]


_F = TypeVar("_F", bound=Callable[..., Any])


def _one_error_style(method: _F) -> _F:
    """Turn whatever ``method`` raises into a PluginError with one line and the CLI's exit code."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from shipyard.components.user_errors import classify

        try:
            return method(*args, **kwargs)
        except PluginError:
            raise
        except MlflowException as exc:
            raise PluginError(" ".join(str(exc.message).split())) from None
        except Exception as exc:
            outcome = classify(exc)
            raise PluginError(outcome.message, outcome.code) from None

    return wrapper  # type: ignore[return-value]


def target_help() -> str:
    """What ``mlflow deployments help -t shipyard`` prints: the local target, then the KServe target."""
    from shipyard.components.deploy import mlflow_kserve

    return f"{__doc__ or ''}\n{mlflow_kserve.__doc__ or ''}"


def run_local(name: str, model_uri: str, flavor: str | None = None, config: dict[str, Any] | None = None) -> None:
    """``mlflow deployments run-local``: create the deployment and serve it until Ctrl-C."""
    client = ShipyardDeploymentClient(TARGET)
    deployment = client.create_deployment(name, model_uri, flavor, config)
    print(f"{name} serving at {deployment['url']} (Ctrl-C stops it)")
    try:
        import time

        while LocalTarget().get(name).is_running():
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        client.delete_deployment(name, config)


def publish_model(name: str, model_uri: str, cfg: dict[str, Any], repository: str | Path, work_dir: Path) -> Any:
    """optimize -> validate -> publish ``model_uri`` as model ``name`` into ``repository`` (a folder or a store URI).

    Returns ``FlowResult``; raises what ``deploy_flow`` raises (ValidationFailed, ComponentError, registry errors).
    """
    from shipyard.components.flow import deploy_flow
    from shipyard.components.optimize import load_arrays

    held_out = labels = None
    if cfg.get("data_path"):
        held_out, labels = load_arrays(cfg["data_path"])
    return deploy_flow(
        model_uri, name=name, repository=repository, held_out_inputs=held_out, held_out_labels=labels,
        work_dir=work_dir, target=cfg.get("optimize_target", "auto"),
        precision=cfg.get("precision", "fp32"), max_batch_size=cfg.get("max_batch_size", 64),
        tracking_uri=cfg.get("tracking_uri"),
    )  # fmt: skip


class ShipyardDeploymentClient(BaseDeploymentClient):  # type: ignore[misc]
    """Deploys registered MLflow models onto the shipyard runtime on this machine."""

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        suffix = target_uri.partition(":")[2].strip("/")
        self._kserve: Any = None
        if suffix.split("/")[0] == "kserve" and suffix.count("/") <= 1:
            from shipyard.components.deploy.mlflow_kserve import KServeDeployments

            self._kserve = KServeDeployments(suffix.partition("/")[2] or None)
        elif suffix not in ("", "local"):
            raise PluginError(f"target {target_uri!r} is not a shipyard target: use 'shipyard' (or "
                              "'shipyard:/local') for this machine, 'shipyard:/kserve' or 'shipyard:/kserve/NAMESPACE'"
                              " for KServe")  # fmt: skip

    @staticmethod
    def _config(config: dict[str, Any] | None) -> dict[str, Any]:
        values = dict(config or {})
        for key in _INT_KEYS:
            if key in values:
                values[key] = int(values[key])
        if "timeout_s" in values:
            values["timeout_s"] = float(values["timeout_s"])
        return values

    def _publish(self, name: str, model_uri: str, cfg: dict[str, Any], repository: Path) -> Any:
        return publish_model(name, model_uri, cfg, repository, repository.parent / "work")

    def _repository(self, name: str, cfg: dict[str, Any]) -> Path:
        if cfg.get("repository"):
            return Path(cfg["repository"])
        return LocalTarget().state_dir / f"{name}-model" / "repository"

    def _describe(self, name: str) -> dict[str, Any]:
        deployment = LocalTarget().get(name)
        return {
            "name": name,
            "flavor": "shipyard",
            "url": deployment.http_url,
            "grpc_url": deployment.grpc_url,
            "repository": deployment.repository,
            "running": deployment.is_running(),
            "pid": deployment.pid,
        }

    @_one_error_style
    def create_deployment(
        self, name: str, model_uri: str, flavor: str | None = None, config: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Optimize, validate and publish ``model_uri``, then serve it. Raises PluginError (an MlflowException).

        A failed create leaves nothing behind: the deployment's own folder (when this call made it) is removed.
        """
        if self._kserve is not None:
            return self._kserve.create(name, model_uri, config)  # type: ignore[no-any-return]
        cfg = self._config(config)
        local = LocalTarget()
        existing = local.find(name)
        if existing is not None and existing.is_running():
            raise PluginError(
                f"deployment {name!r} exists and is running: `mlflow deployments update -t shipyard --name {name} "
                f"-m MODEL_URI` replaces its model, `mlflow deployments delete -t shipyard --name {name}` stops it"
            )
        repository = self._repository(name, cfg)
        own_folder = None if cfg.get("repository") else repository.parent
        made_here = own_folder is not None and not own_folder.exists()
        try:
            result = self._publish(name, model_uri, cfg, repository)
            if existing is not None:
                local.stop(name)
            local.start(name, repository, http_port=cfg.get("http_port", HTTP_PORT),
                        grpc_port=cfg.get("grpc_port", GRPC_PORT), timeout_s=cfg.get("timeout_s", 120.0))  # fmt: skip
        except BaseException:
            if made_here and own_folder is not None:
                shutil.rmtree(own_folder, ignore_errors=True)
            raise
        return {**self._describe(name), "model_uri": result.model_uri, "version": result.published.version}

    @_one_error_style
    def update_deployment(
        self, name: str, model_uri: str | None = None, flavor: str | None = None, config: dict[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Publish ``model_uri`` as the next version and restart the runtime on it (same ports).

        KServe target: roll ``model_uri`` out as a canary (``-C canary_percent``; 100 promotes, 0 rolls back)."""
        if self._kserve is not None:
            return self._kserve.update(name, model_uri, config)  # type: ignore[no-any-return]
        cfg = self._config(config)
        local = LocalTarget()
        current = local.get(name)
        repository = Path(current.repository)
        published = None
        if model_uri is not None:
            published = self._publish(name, model_uri, cfg, repository)
        local.stop(name)
        local.start(name, repository, http_port=cfg.get("http_port", current.http_port),
                    grpc_port=cfg.get("grpc_port", current.grpc_port),
                    timeout_s=cfg.get("timeout_s", 120.0))  # fmt: skip
        info = self._describe(name)
        if published is not None:
            info.update(model_uri=published.model_uri, version=published.published.version)
        return info

    @_one_error_style
    def delete_deployment(self, name: str, config: dict[str, Any] | None = None, endpoint: str | None = None) -> None:
        """Stop the runtime and forget the deployment (its repository stays on disk); KServe: delete the service."""
        if self._kserve is not None:
            return self._kserve.delete(name)  # type: ignore[no-any-return]
        LocalTarget().stop(name)

    @_one_error_style
    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        if self._kserve is not None:
            return self._kserve.list()  # type: ignore[no-any-return]
        return [self._describe(d.name) for d in LocalTarget().list()]

    @_one_error_style
    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        if self._kserve is not None:
            return self._kserve.get(name)  # type: ignore[no-any-return]
        return self._describe(name)

    @_one_error_style
    def predict(
        self, deployment_name: str | None = None, inputs: Any = None, endpoint: str | None = None
    ) -> PredictionsResponse:
        """Infer over OIP v2 REST. ``inputs``: an array (the model's single input), a dict name -> array,
        a pandas DataFrame (one input, rows = batch), or ``{"inputs": ...}`` as read from ``--input-path``."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException, triton_to_np_dtype

        if self._kserve is not None:
            return PredictionsResponse(self._kserve.predict(deployment_name, inputs))
        if deployment_name is None:
            raise PluginError("predict needs the deployment name (--name)")
        described = self._describe(deployment_name)
        if not described["running"]:
            raise PluginError(f"deployment {deployment_name!r} is not running: create or update it again")
        client = httpclient.InferenceServerClient(described["url"].removeprefix("http://"))
        try:
            meta = client.get_model_metadata(deployment_name)
        except InferenceServerException as exc:
            raise PluginError(f"deployment {deployment_name!r}: the runtime says {exc.message()}") from None
        feeds = _as_feeds(inputs, [i["name"] for i in meta["inputs"]])
        tensors = []
        for spec in meta["inputs"]:
            try:
                array = np.asarray(feeds[spec["name"]], dtype=triton_to_np_dtype(spec["datatype"]))
            except (ValueError, TypeError) as exc:
                raise PluginError(f"input {spec['name']!r}: cannot be read as {spec['datatype']} ({exc})") from None
            tensor = httpclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        try:
            answer = client.infer(deployment_name, tensors)
        except InferenceServerException as exc:
            raise PluginError(f"the runtime refused the request: {exc.message()}") from None
        outputs = {o["name"]: answer.as_numpy(o["name"]) for o in meta["outputs"]}
        if len(outputs) == 1:
            return PredictionsResponse({"predictions": next(iter(outputs.values())).tolist()})
        return PredictionsResponse({"predictions": {k: v.tolist() for k, v in outputs.items()}})


def _rows(values: Any, what: str) -> np.ndarray:
    """A list of rows (or an array) as one array, batch first; ragged rows are a PluginError."""
    try:
        return np.asarray([np.asarray(v) for v in values] if isinstance(values, (list, tuple)) else values)
    except ValueError:
        raise PluginError(f"{what}: the rows differ in length; give one row of the same shape per sample") from None


def _frame_feeds(frame: Any, names: list[str]) -> dict[str, Any]:
    """A DataFrame as ``mlflow deployments predict`` reads it: columns named by inputs (or ``inputs``), cells
    holding rows; or plain numeric columns (one input, a row per sample)."""
    columns = [str(c) for c in frame.columns]
    if columns == ["inputs"] and len(names) == 1:
        return {names[0]: _rows(list(frame["inputs"]), "inputs")}
    if set(columns) <= set(names) and columns:
        return {str(c): _rows(list(frame[c]), str(c)) for c in frame.columns}
    if len(names) == 1:
        return {names[0]: frame.to_numpy()}
    raise PluginError(f"the model takes inputs {names}: give {{\"{names[0]}\": [ROW, ...], ...}} (columns {columns})")


def _as_feeds(inputs: Any, names: list[str]) -> dict[str, Any]:
    """Normalise predict inputs to {input name: array}. Raises PluginError naming the expected inputs."""
    if isinstance(inputs, (str, bytes)):
        inputs = json.loads(inputs)
    if hasattr(inputs, "to_numpy"):  # pandas DataFrame (the mlflow CLI reads --input-path with pandas.read_json)
        inputs = _frame_feeds(inputs, names)
    if isinstance(inputs, dict) and set(inputs) == {"inputs"}:
        inputs = inputs["inputs"]
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise PluginError(f"inputs lack {missing}: the model takes {names}")
        return {n: _rows(inputs[n], n) for n in names}
    if len(names) != 1:
        raise PluginError(f"the model takes {len(names)} inputs {names}: pass a dict name -> rows")
    return {names[0]: _rows(inputs, names[0])}
