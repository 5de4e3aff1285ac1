"""``shipyard pipeline run|compile|submit``: the KFP pipelines from the command line.

Parameters are given as ``--param KEY=VALUE`` (repeatable) and converted to the pipeline's types.
kfp is imported inside the commands.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Optional

import typer

pipeline_app = typer.Typer(help="Run, compile or submit the deploy and promotion pipelines.", no_args_is_help=True)

_PIPELINE_HELP = "deploy (model URI -> served endpoint) or promotion (gates, canary, alias)."


def _pipeline(name: str, gpu: bool, cluster: bool = False) -> Any:
    from shipyard.pipelines.definitions import PIPELINES

    if name not in PIPELINES:
        raise typer.BadParameter(f"unknown pipeline {name!r}: use one of {', '.join(PIPELINES)}")
    return PIPELINES[name](gpu=gpu, cluster=cluster)


_IMAGE_HELP = "Component image (default: the release image; build yours from pipelines/Dockerfile)."


def parse_params(pipeline: Any, params: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> typed arguments of ``pipeline`` (its Python function's annotations).

    ``deployment_name``, when the pipeline has one and it is not given, defaults to ``model_name``.
    Raises: typer.BadParameter naming an unknown key, a malformed pair, a bad number, or a missing required one.
    """
    signature = inspect.signature(pipeline.pipeline_func)
    values: dict[str, Any] = {}
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {item!r}: use KEY=VALUE")
        if key not in signature.parameters:
            raise typer.BadParameter(f"--param {key}: not a parameter; known: {', '.join(signature.parameters)}")
        kind = signature.parameters[key].annotation
        try:
            values[key] = int(raw) if kind is int else float(raw) if kind is float else raw
        except ValueError:
            raise typer.BadParameter(f"--param {key}={raw!r}: expected {kind.__name__}") from None
    if "deployment_name" in signature.parameters and not values.get("deployment_name") and values.get("model_name"):
        values["deployment_name"] = values["model_name"]  # the deployment is named after the model unless told
    missing = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty and n not in values]
    if missing:
        raise typer.BadParameter(f"missing --param for: {', '.join(missing)}")
    return values


@pipeline_app.command("compile")
def compile_command(
    name: str = typer.Argument(..., help=_PIPELINE_HELP),
    output: Path = typer.Option(Path("pipeline.yaml"), "--output", "-o", help="Where to write the pipeline YAML."),
    gpu: bool = typer.Option(False, help="Request an NVIDIA GPU for optimize and validate."),
    image: Optional[str] = typer.Option(None, "--image", help=_IMAGE_HELP),
) -> None:
    """Compile a pipeline to KFP v2 YAML (IR), with the credentials Secrets wired in (docs/cluster.md)."""
    from shipyard.pipelines.cluster import compile_pipeline

    try:
        compile_pipeline(_pipeline(name, gpu, cluster=True), output, image)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"wrote {output}")


@pipeline_app.command("run")
def run_command(
    name: str = typer.Argument(..., help=_PIPELINE_HELP),
    param: list[str] = typer.Option([], "--param", "-p", help="Pipeline parameter KEY=VALUE (repeatable)."),
    local: bool = typer.Option(True, "--local/--no-local", help="Run here with kfp.local.SubprocessRunner."),
    pipeline_root: Path = typer.Option(Path(".shipyard/kfp"), help="Where local runs keep their artifacts."),
) -> None:
    """Run a pipeline on this machine (KFP local SubprocessRunner, this Python environment)."""
    if not local:
        typer.secho("error: use `shipyard pipeline submit --host URL` for a Kubeflow Pipelines endpoint", err=True)
        raise typer.Exit(2)
    pipeline = _pipeline(name, gpu=False)
    arguments = parse_params(pipeline, param)
    result = run_local(pipeline, arguments, pipeline_root)
    if result is not None:
        typer.echo(f"{name} pipeline output: {result}")


def run_local(pipeline: Any, arguments: dict[str, Any], pipeline_root: str | Path) -> Any:
    """Run ``pipeline`` with the KFP local SubprocessRunner (no venv: this environment).

    Returns the pipeline's single output (the deploy pipeline's endpoint URL), or None when it has none.
    Raises: RuntimeError from kfp when a task fails (its log names the failing step).
    """
    from kfp import local as kfp_local

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    task = pipeline(**arguments)
    outputs = getattr(task, "outputs", None) or {}
    return outputs.get("Output")


@pipeline_app.command("submit")
def submit_command(
    name: str = typer.Argument(..., help=_PIPELINE_HELP),
    host: str = typer.Option(..., help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8888."),
    param: list[str] = typer.Option([], "--param", "-p", help="Pipeline parameter KEY=VALUE (repeatable)."),
    experiment: str = typer.Option("shipyard", help="KFP experiment name."),
    namespace: Optional[str] = typer.Option(None, help="Kubeflow profile namespace (multi-user installs)."),
    gpu: bool = typer.Option(False, help="Request an NVIDIA GPU for optimize and validate."),
    image: Optional[str] = typer.Option(None, "--image", help=_IMAGE_HELP),
    service_account: Optional[str] = typer.Option(
        None, "--service-account", help="Service account of the run's pods (serving_runtime/manifests/rbac.yaml)."
    ),
    existing_token: Optional[str] = typer.Option(
        None, "--token", envvar="KFP_TOKEN", help="Bearer token for the KFP API (default: kfp's own credentials)."
    ),
) -> None:
    """Submit a pipeline run to a Kubeflow Pipelines endpoint and print the run id."""
    from shipyard.pipelines.cluster import compile_to_temp

    pipeline = _pipeline(name, gpu, cluster=True)
    arguments = parse_params(pipeline, param)
    try:
        package = compile_to_temp(pipeline, image)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        run = _submit(host, existing_token,
            str(package), arguments=arguments, experiment_name=experiment, namespace=namespace,
            service_account=service_account, run_name=f"shipyard {name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        )  # fmt: skip
    except _SubmitError as exc:
        typer.secho(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        package.unlink(missing_ok=True)
    typer.echo(f"submitted run {run.run_id} to {host}")


class _SubmitError(Exception):
    """The KFP API refused the submission or could not be reached (one line, for the CLI)."""


def _submit(host: str, token: str | None, package: str, **kwargs: Any) -> Any:
    """``kfp.Client(...).create_run_from_pipeline_package`` with the API's refusals as one-line ``_SubmitError``."""
    import json

    import kfp
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        client = kfp.Client(host=host, namespace=kwargs.get("namespace"), existing_token=token)
        return client.create_run_from_pipeline_package(package, **kwargs)
    except ApiException as exc:
        try:
            detail = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            detail = exc.reason
        hint = " (check --token and --namespace)" if exc.status in (401, 403) else ""
        raise _SubmitError(f"the KFP API at {host} refused the run: {exc.status} {detail}{hint}") from None
    except HTTPError as exc:
        where = host.split("://", 1)[-1].rstrip("/")
        raise _SubmitError(f"cannot reach {where} (the KFP API): {exc}: check --host and that KFP runs") from None
