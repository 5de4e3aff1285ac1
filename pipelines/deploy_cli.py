"""``shipyard deploy`` / ``shipyard undeploy``: a published repository to KServe or a local process."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from typing import Any, Optional

import typer

EXIT_USER_ERROR = 2  # bad settings, nothing deployed
EXIT_DEPLOY_FAILED = 2  # the cluster or the runtime refused / did not become ready: the line says why


class Target(str, Enum):
    kserve = "kserve"
    local = "local"


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def deploy(
    source: str = typer.Argument(
        ..., help="Model repository: a storage URI for kserve (s3://, gs://, pvc://...), a local folder for local."
    ),
    name: str = typer.Option(..., "--name", "-n", help="InferenceService / local deployment name."),
    target: Target = typer.Option(Target.kserve, help="kserve: ServingRuntime + InferenceService; local: a process."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the manifests (or local command); change nothing."),
    namespace: str = typer.Option("default", help="Kubernetes namespace."),
    image: Optional[str] = typer.Option(None, help="Runtime image (default: the shipyard release image)."),
    runtime: str = typer.Option("shipyard-runtime", help="ServingRuntime name."),
    apply_runtime: bool = typer.Option(True, "--apply-runtime/--no-apply-runtime", help="Also apply the runtime."),
    model_format: str = typer.Option("onnx", help="onnx | tensorrt | pytorch."),
    protocol: str = typer.Option("v2", help="v2 (REST) or grpc-v2."),
    gpus: int = typer.Option(0, help="nvidia.com/gpu per replica."),
    cpu: str = typer.Option("1", help="CPU per replica (request = limit)."),
    memory: str = typer.Option("2Gi", help="Memory per replica (request = limit)."),
    min_replicas: int = typer.Option(1, help="Minimum replicas (0 allows scale to zero in Serverless mode)."),
    max_replicas: int = typer.Option(1, help="Maximum replicas."),
    scale_metric: Optional[str] = typer.Option(
        None, help="concurrency | rps | cpu | memory | pending_requests | queue_time_us (KEDA on Prometheus)."
    ),
    scale_target: float = typer.Option(8, help="Target value of --scale-metric per replica."),
    prometheus_url: Optional[str] = typer.Option(None, help="Prometheus for KEDA metrics."),
    canary_percent: Optional[int] = typer.Option(None, help="Traffic percent to the new revision (Serverless)."),
    deployment_mode: Optional[str] = typer.Option(None, help="Serverless | Standard (default: from the metric)."),
    kubeconfig: Optional[str] = typer.Option(None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)."),
    context: Optional[str] = typer.Option(None, help="kubeconfig context."),
    timeout: float = typer.Option(600, help="Seconds to wait for Ready."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the service is Ready."),
    http_port: int = typer.Option(8080, help="Local target: REST port."),
    grpc_port: int = typer.Option(8081, help="Local target: gRPC port."),
    state_dir: Optional[str] = typer.Option(None, help="Local target: where deployments are recorded."),
    replace: bool = typer.Option(
        False, "--replace", help="Local target: stop a running deployment of this name and start it afresh."
    ),
) -> None:
    """Deploy a published model repository and print where it serves."""
    if target is Target.local:
        _deploy_local(name, source, dry_run, replace, http_port, grpc_port, state_dir, timeout)
        return
    try:
        isvc, runtime_spec = _kserve_specs(
            name, source, namespace=namespace, runtime=runtime, model_format=model_format, protocol=protocol,
            gpus=gpus, cpu=cpu, memory=memory, min_replicas=min_replicas, max_replicas=max_replicas,
            scale_metric=scale_metric, scale_target=scale_target, prometheus_url=prometheus_url,
            canary_percent=canary_percent, deployment_mode=deployment_mode,
            image=image if apply_runtime else None, apply_runtime=apply_runtime,
        )  # fmt: skip
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USER_ERROR) from exc
    if dry_run:
        from shipyard.components.deploy import render_kserve

        sys.stdout.write(render_kserve(isvc, runtime_spec))
        return
    _apply_kserve(isvc, runtime_spec, kubeconfig=kubeconfig, context=context, wait=wait, timeout=timeout)


def _deploy_local(
    name: str,
    source: str,
    dry_run: bool,
    replace: bool,
    http_port: int,
    grpc_port: int,
    state_dir: str | None,
    timeout: float,
) -> None:
    from shipyard.components.deploy import DeployError, LocalTarget, deploy_local

    if dry_run:
        typer.echo(" ".join(LocalTarget(state_dir).command(source, http_port, grpc_port)))
        return
    try:
        if replace and LocalTarget(state_dir).find(name) is not None:
            LocalTarget(state_dir).stop(name)
        result = deploy_local(
            name, source, http_port=http_port, grpc_port=grpc_port, state_dir=state_dir, timeout_s=timeout
        )
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USER_ERROR) from exc
    except DeployError as exc:
        raise _fail(str(exc), EXIT_DEPLOY_FAILED) from exc
    typer.echo(f"{name}: ready")
    typer.echo(f"  REST  {result.url}  (curl {result.url}/v2/health/ready)")
    typer.echo(f"  gRPC  {result.grpc_url}")
    where = f" --state-dir {shlex.quote(state_dir)}" if state_dir else ""
    typer.echo(f"  stop: shipyard undeploy {name} --target local{where}")


def _kserve_specs(
    name: str,
    source: str,
    *,
    scale_metric: str | None,
    scale_target: float,
    prometheus_url: str | None,
    canary_percent: int | None,
    image: str | None,
    apply_runtime: bool,
    runtime: str,
    protocol: str,
    deployment_mode: str | None,
    **resources: Any,
) -> tuple[Any, Any]:
    """The InferenceService spec and (with ``apply_runtime``) the ServingRuntime spec.

    Raises: ValueError naming the bad setting.
    """
    from shipyard.components.deploy import Autoscaling, InferenceServiceSpec, RuntimeSpec

    scaling = None
    if scale_metric is not None:
        extra = {"prometheus_url": prometheus_url} if prometheus_url else {}
        scaling = Autoscaling(scale_metric, scale_target, **extra)  # type: ignore[arg-type]
    isvc = InferenceServiceSpec(
        name=name,
        storage_uri=source,
        runtime=runtime,
        protocol=protocol,  # type: ignore[arg-type]
        autoscaling=scaling,
        canary_traffic_percent=canary_percent,
        deployment_mode=deployment_mode,  # type: ignore[arg-type]
        **resources,
    )
    runtime_spec = None
    if apply_runtime:
        runtime_spec = RuntimeSpec(name=runtime, image=image) if image else RuntimeSpec(name=runtime)
    return isvc, runtime_spec


def _apply_kserve(
    isvc: Any, runtime_spec: Any, *, kubeconfig: str | None, context: str | None, wait: bool, timeout: float
) -> None:
    from shipyard.components.deploy import DeployError, deploy_kserve

    name, namespace = isvc.name, isvc.namespace
    last: list[str] = []

    def progress(status: object) -> None:
        message = getattr(status, "message", "") or ("ready" if getattr(status, "ready", False) else "waiting")
        if not last or last[-1] != message:
            last.append(message)
            typer.echo(f"  {name}: {message}", err=True)

    try:
        result = deploy_kserve(
            isvc, runtime_spec, kubeconfig=kubeconfig, context=context, wait=wait, timeout_s=timeout, on_status=progress
        )
    except DeployError as exc:
        raise _fail(str(exc), EXIT_DEPLOY_FAILED) from exc
    if not wait:
        typer.echo(f"inferenceservice/{name} applied in {namespace} (not waiting for Ready)")
        return
    typer.echo(f"inferenceservice/{name} ready")
    typer.echo(f"  URL       {result.url}")
    typer.echo(f"  internal  {result.internal_url}")
    typer.echo(f"  curl {result.url}/v2/models  (OIP v2)")


def undeploy(
    name: str = typer.Argument(..., help="Deployment name."),
    target: Target = typer.Option(Target.local, help="local or kserve."),
    namespace: str = typer.Option("default", help="Kubernetes namespace (kserve)."),
    kubeconfig: Optional[str] = typer.Option(None, help="kubeconfig file (kserve)."),
    context: Optional[str] = typer.Option(None, help="kubeconfig context (kserve)."),
    state_dir: Optional[str] = typer.Option(None, help="Local target: where deployments are recorded."),
) -> None:
    """Stop a local deployment, or delete an InferenceService (the ServingRuntime stays)."""
    from shipyard.components.deploy import DeployError, LocalTarget

    try:
        if target is Target.local:
            stopped = LocalTarget(state_dir).stop(name)
            typer.echo(f"{name}: {'stopped' if stopped else 'was not running; forgotten'}")
        else:
            from shipyard.components.deploy import kube

            deleted = kube.delete(kube.api_client(kubeconfig, context), name, namespace)
            typer.echo(f"inferenceservice/{name}: {'deleted' if deleted else 'not found'}")
    except (ValueError, DeployError) as exc:
        raise _fail(str(exc), EXIT_DEPLOY_FAILED) from exc
