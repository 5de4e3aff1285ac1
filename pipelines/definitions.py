"""The deploy pipeline and the promotion pipeline (KFP v2).

deploy:    model URI -> resolve -> export -> optimize -> validate (gate) -> publish -> deploy -> smoke test
           -> served endpoint URL out. A failed gate fails its task and nothing after it runs.
promotion: the same gates, then the rollout: on KServe, a canary first when the alias already
           points at an older version (which is serving), then the full rollout; the alias moves
           only after the served model answered the smoke test.

``make_*`` build the pipeline function; ``gpu=True`` asks for one NVIDIA GPU on the optimize and
validate steps (TensorRT builds and profiles on the GPU it will serve on).
(No ``from __future__ import annotations``: KFP reads the annotations at decoration time.)
"""

from typing import Any

from kfp import dsl

from shipyard.pipelines import kfp_components as c
from shipyard.pipelines.cluster import use_cluster_secrets

DEPLOY_PIPELINE_NAME = "shipyard-deploy"
PROMOTION_PIPELINE_NAME = "shipyard-promotion"


def _gpu(task: Any, gpu: bool) -> Any:
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    return task


def _gates(model_uri: Any, tracking_uri: Any, data_path: Any, optimize_target: Any, precision: Any,
           repository: Any, model_name: Any, max_batch_size: Any, gpu: bool) -> tuple[Any, Any, Any]:  # fmt: skip
    """resolve -> export -> optimize -> validate -> publish; returns (resolved, export, publish) tasks."""
    resolved = c.resolve_model(model_uri=model_uri, tracking_uri=tracking_uri).set_display_name("resolve")
    exported = c.export_onnx(model_uri=resolved.outputs["uri"], tracking_uri=tracking_uri,
                             max_batch_size=max_batch_size).set_display_name("export")  # fmt: skip
    optimized = _gpu(c.optimize_model(onnx_model=exported.outputs["onnx_model"], model_uri=resolved.outputs["uri"],
                                      tracking_uri=tracking_uri, target=optimize_target, precision=precision,
                                      quantization="dynamic"), gpu).set_display_name("optimize")  # fmt: skip
    validated = _gpu(c.validate_model(reference=exported.outputs["onnx_model"],
                                      candidate=optimized.outputs["optimized_model"],
                                      model_uri=resolved.outputs["uri"], tracking_uri=tracking_uri,
                                      input_names=exported.outputs["Output"], data_path=data_path, precision=precision,
                                      max_batch_size=max_batch_size, latency_budget_ms=20.0), gpu)  # fmt: skip
    validated.set_display_name("validate")
    published = c.publish_model(optimized_model=optimized.outputs["optimized_model"],
                                onnx_model=exported.outputs["onnx_model"],
                                validation=validated.outputs["validation"], repository=repository,
                                model_name=model_name, model_uri=resolved.outputs["uri"],
                                tracking_uri=tracking_uri).set_display_name("publish")  # fmt: skip
    return resolved, exported, published


def _deploy_args(repository: Any, deployment_name: Any, target: Any, namespace: Any, http_port: Any, grpc_port: Any,
                 state_dir: Any, gpus: Any, kubeconfig: Any, timeout_s: Any) -> dict[str, Any]:  # fmt: skip
    """The deploy step's arguments that every rollout shares (all but ``canary_traffic_percent``)."""
    return dict(repository=repository, name=deployment_name, target=target, namespace=namespace,
                http_port=http_port, grpc_port=grpc_port, state_dir=state_dir, gpus=gpus,
                kubeconfig=kubeconfig, timeout_s=timeout_s)  # fmt: skip


def _deploy_and_smoke_test(deploy_args: dict[str, Any], canary_traffic_percent: Any, published: Any, exported: Any,
                           model_name: Any, deploy_display: str | None = None,
                           check_display: str | None = None) -> tuple[Any, Any]:  # fmt: skip
    """deploy (after publish) -> smoke test against the exported ONNX; returns (deploy, smoke test) tasks."""
    deployed = c.deploy_model(canary_traffic_percent=canary_traffic_percent, **deploy_args).after(published)
    if deploy_display:
        deployed.set_display_name(deploy_display)
    checked = c.smoke_test(url=deployed.outputs["url"], model_name=model_name, reference=exported.outputs["onnx_model"])
    if check_display:
        checked.set_display_name(check_display)
    return deployed, checked


def make_deploy_pipeline(gpu: bool = False, cluster: bool = False) -> Any:
    """The deploy pipeline: a model URI in, a served endpoint (REST URL) out.

    ``cluster=True`` (compile and submit) gives every task the credentials Secrets (``pipelines/cluster.py``).
    """

    @dsl.pipeline(name=DEPLOY_PIPELINE_NAME, description="MLflow model -> ONNX -> optimized -> validated -> "
                  "published -> served, with gates that stop it.")  # fmt: skip
    def deploy_pipeline(
        model_uri: str,
        repository: str,
        model_name: str,
        tracking_uri: str = "",
        deployment_name: str = "",
        target: str = "local",
        data_path: str = "",
        optimize_target: str = "auto",
        precision: str = "fp32",
        max_batch_size: int = 64,
        namespace: str = "default",
        http_port: int = 8080,
        grpc_port: int = 8081,
        state_dir: str = "",
        gpus: int = 0,
        kubeconfig: str = "",
        timeout_s: float = 600.0,
    ) -> str:
        _, exported, published = _gates(model_uri, tracking_uri, data_path, optimize_target, precision, repository,
                                        model_name, max_batch_size, gpu)  # fmt: skip
        deploy_args = _deploy_args(repository, deployment_name, target, namespace, http_port, grpc_port, state_dir,
                                   gpus, kubeconfig, timeout_s)  # fmt: skip
        deployed, _ = _deploy_and_smoke_test(deploy_args, 0, published, exported, model_name, "deploy", "smoke test")
        if cluster:
            use_cluster_secrets()
        return deployed.outputs["url"]

    return deploy_pipeline


def make_promotion_pipeline(gpu: bool = False, cluster: bool = False) -> Any:
    """The promotion pipeline: gates, rollout (canary first on KServe when an older version serves), alias.

    ``cluster=True``: as ``make_deploy_pipeline``.
    """

    @dsl.pipeline(name=PROMOTION_PIPELINE_NAME, description="Gate a model version, roll it out (canary first "
                  "when an older revision serves) and give it the alias.")  # fmt: skip
    def promotion_pipeline(
        model_uri: str,
        repository: str,
        model_name: str,
        deployment_name: str,
        alias: str = "champion",
        tracking_uri: str = "",
        target: str = "local",
        data_path: str = "",
        optimize_target: str = "auto",
        precision: str = "fp32",
        max_batch_size: int = 64,
        canary_traffic_percent: int = 10,
        namespace: str = "default",
        http_port: int = 8080,
        grpc_port: int = 8081,
        state_dir: str = "",
        gpus: int = 0,
        kubeconfig: str = "",
        timeout_s: float = 600.0,
    ) -> None:
        resolved, exported, published = _gates(model_uri, tracking_uri, data_path, optimize_target, precision,
                                               repository, model_name, max_batch_size, gpu)  # fmt: skip
        serving = c.alias_version(model_name=resolved.outputs["name"], alias=alias,
                                  tracking_uri=tracking_uri).set_display_name("current alias")  # fmt: skip
        common = _deploy_args(repository, deployment_name, target, namespace, http_port, grpc_port, state_dir, gpus,
                              kubeconfig, timeout_s)  # fmt: skip
        with dsl.If(serving.output > 0, name="older-version-serves"):  # type: ignore[operator]
            with dsl.If(target == "kserve", name="kserve"):
                _, canary_check = _deploy_and_smoke_test(common, canary_traffic_percent, published, exported,
                                                         model_name, "deploy canary", "smoke test canary")  # fmt: skip
                promoted = c.promote_model(model_uri=resolved.outputs["uri"], alias=alias,
                                           tracking_uri=tracking_uri).after(canary_check)  # fmt: skip
                c.deploy_model(canary_traffic_percent=100, **common).after(promoted).set_display_name("roll out")
            with dsl.Else():
                _, checked = _deploy_and_smoke_test(common, 0, published, exported, model_name)
                c.promote_model(model_uri=resolved.outputs["uri"], alias=alias,
                                tracking_uri=tracking_uri).after(checked)  # fmt: skip
        with dsl.Else():
            _, first_check = _deploy_and_smoke_test(common, 0, published, exported, model_name, "deploy")
            c.promote_model(model_uri=resolved.outputs["uri"], alias=alias,
                            tracking_uri=tracking_uri).after(first_check)  # fmt: skip
        if cluster:
            use_cluster_secrets()

    return promotion_pipeline


def _score_pipeline(gpu: bool = False, cluster: bool = False) -> Any:
    from shipyard.pipelines.scoring import make_score_pipeline

    return make_score_pipeline(gpu=gpu, cluster=cluster)


PIPELINES = {"deploy": make_deploy_pipeline, "promotion": make_promotion_pipeline, "score": _score_pipeline}
