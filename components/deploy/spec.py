"""What to deploy: plain, validated settings for the ServingRuntime and the InferenceService.

Nothing here imports the kserve SDK or the kubernetes client, so the settings can be built and
checked anywhere (the CLI, the MLflow plugin, a KFP component) before anything is rendered.
Every setting is validated at construction; errors name the bad value and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_IMAGE = "ghcr.io/shipyard/serving-runtime:0.1.0"
DEFAULT_RUNTIME_NAME = "shipyard-runtime"
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri
HTTP_PORT = 8080  # KServe's default ports
GRPC_PORT = 8081
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
METRICS_PATH = "/metrics"
MODEL_FORMATS = ("onnx", "tensorrt", "pytorch")
# SIGTERM drain: the runtime stops taking requests and finishes what it accepted for up to DRAIN_S
# (--graceful-shutdown-secs); Kubernetes waits TERMINATION_GRACE_S before SIGKILL, a margin above it.
DRAIN_S = 30
TERMINATION_GRACE_S = DRAIN_S + 10

# RFC 1123 label: what Kubernetes accepts as a resource name (InferenceService names also become DNS labels).
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

DeploymentMode = Literal["Serverless", "Standard"]
ScaleMetric = Literal["concurrency", "rps", "cpu", "memory", "pending_requests", "queue_time_us"]
Protocol = Literal["v2", "grpc-v2"]

# Prometheus queries on the runtime's own (Triton-named) metrics, per InferenceService.
# ``{namespace}`` and ``{name}`` are filled in; the pod label is what Prometheus' kubernetes-pods job sets.
_POD = '{{namespace="{namespace}",pod=~"{name}-predictor-.*"}}'
PROMETHEUS_QUERIES: dict[str, str] = {
    # requests waiting in the runtime's queues, summed over replicas
    "pending_requests": f"sum(nv_inference_pending_request_count{_POD})",
    # mean queue time per request over the last minute, in microseconds
    "queue_time_us": (
        f"sum(rate(nv_inference_queue_duration_us{_POD}[1m]))"
        f" / clamp_min(sum(rate(nv_inference_request_success{_POD}[1m])), 1)"
    ),
}
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid Kubernetes resource name.

    Raises:
        ValueError: naming the bad value and what a valid name looks like.
    """
    if not value or len(value) > 63 or not _NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid Kubernetes name: use at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'digits-cnn')"
        )
    return value


def check_quantity(value: str, what: str) -> str:
    """Return ``value`` if it is a Kubernetes resource quantity such as ``500m``, ``2`` or ``4Gi``.

    Raises:
        ValueError: naming the bad value.
    """
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"{what} {value!r} is not a Kubernetes quantity: use e.g. '500m', '2', '4Gi'")
    return value


def _check_port(value: int, what: str) -> None:
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} {value} is not a TCP port: use 1..65535")


@dataclass(frozen=True)
class RuntimeSpec:
    """The ServingRuntime: our image, run as KServe's ``kserve-container``.

    Raises (at construction):
        ValueError: a bad name, port or empty image.
    """

    name: str = DEFAULT_RUNTIME_NAME
    image: str = DEFAULT_IMAGE
    http_port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT
    extra_args: tuple[str, ...] = ()
    cpu: str = "1"
    memory: str = "2Gi"
    cluster_scoped: bool = False  # ClusterServingRuntime instead of a namespaced ServingRuntime

    def __post_init__(self) -> None:
        check_name(self.name, "runtime name")
        if not self.image.strip():
            raise ValueError("runtime image is empty: pass the serving runtime image, e.g. " + DEFAULT_IMAGE)
        _check_port(self.http_port, "http_port")
        _check_port(self.grpc_port, "grpc_port")
        if self.http_port == self.grpc_port:
            raise ValueError(f"http_port and grpc_port are both {self.http_port}: give them different ports")
        check_quantity(self.cpu, "runtime cpu")
        check_quantity(self.memory, "runtime memory")

    def args(self) -> list[str]:
        """The runtime's command-line arguments (accepted by ``python -m shipyard.serving_runtime``)."""
        return [
            f"--model-repository={MODEL_MOUNT}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--graceful-shutdown-secs={DRAIN_S}",
            *self.extra_args,
        ]


@dataclass(frozen=True)
class Autoscaling:
    """Scale between min and max replicas on one metric.

    ``concurrency``/``rps`` use Knative's autoscaler (Serverless mode); ``cpu``/``memory`` an HPA on
    utilization percent; ``pending_requests``/``queue_time_us`` are the runtime's own Prometheus
    metrics, scaled by KEDA (Standard mode, the KServe ``keda`` autoscaler class).

    Raises (at construction):
        ValueError: an unknown metric or a target that is not positive.
    """

    metric: ScaleMetric = "pending_requests"
    target: float = 8
    prometheus_url: str = DEFAULT_PROMETHEUS_URL

    def __post_init__(self) -> None:
        allowed = ("concurrency", "rps", "cpu", "memory", *PROMETHEUS_QUERIES)
        if self.metric not in allowed:
            raise ValueError(f"autoscaling metric {self.metric!r} is not supported: use one of {', '.join(allowed)}")
        if not self.target > 0:
            raise ValueError(f"autoscaling target {self.target} must be > 0")

    @property
    def uses_prometheus(self) -> bool:
        return self.metric in PROMETHEUS_QUERIES

    @property
    def knative(self) -> bool:
        return self.metric in ("concurrency", "rps")


@dataclass(frozen=True)
class InferenceServiceSpec:
    """The InferenceService: one model repository served by the runtime.

    Raises (at construction):
        ValueError: a bad name, storage URI, quantity, replica range, canary percent, or a
            combination KServe cannot run (e.g. KEDA metrics in Serverless mode, canary in Standard).
    """

    name: str
    storage_uri: str
    namespace: str = "default"
    runtime: str = DEFAULT_RUNTIME_NAME
    model_format: str = "onnx"
    protocol: Protocol = "v2"
    gpus: int = 0
    cpu: str = "1"
    memory: str = "2Gi"
    min_replicas: int = 1
    max_replicas: int = 1
    autoscaling: Autoscaling | None = None
    canary_traffic_percent: int | None = None
    deployment_mode: DeploymentMode | None = None  # None: Standard when KEDA metrics are used, else Serverless
    service_account: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name, "InferenceService name")
        check_name(self.namespace, "namespace")
        check_name(self.runtime, "runtime name")
        if "://" not in self.storage_uri:
            raise ValueError(
                f"storage_uri {self.storage_uri!r} has no scheme: use e.g. s3://bucket/repo, gs://bucket/repo or "
                "pvc://claim/repo (a local path is served with --target local instead)"
            )
        if self.model_format not in MODEL_FORMATS:
            raise ValueError(
                f"model_format {self.model_format!r} is not served by the runtime: use one of {MODEL_FORMATS}"
            )
        if self.protocol not in ("v2", "grpc-v2"):
            raise ValueError(f"protocol {self.protocol!r} is not supported: use 'v2' or 'grpc-v2'")
        if self.gpus < 0:
            raise ValueError(f"gpus {self.gpus} must be >= 0")
        check_quantity(self.cpu, "cpu")
        check_quantity(self.memory, "memory")
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise ValueError(
                f"replicas min={self.min_replicas} max={self.max_replicas}: need 0 <= min <= max and max >= 1"
            )
        if self.canary_traffic_percent is not None and not 0 <= self.canary_traffic_percent <= 100:
            raise ValueError(f"canary_traffic_percent {self.canary_traffic_percent} must be within 0..100")
        if self.deployment_mode not in (None, "Serverless", "Standard"):
            raise ValueError(
                f"deployment_mode {self.deployment_mode!r} is not supported: use 'Serverless' (Knative) or "
                "'Standard' (plain Deployments; KServe's former RawDeployment)"
            )
        mode = self.mode
        if self.autoscaling is not None:
            if self.autoscaling.uses_prometheus and mode == "Serverless":
                raise ValueError(
                    f"autoscaling on {self.autoscaling.metric!r} needs KEDA, which KServe runs only in Standard "
                    "mode: leave deployment_mode unset or set it to 'Standard'"
                )
            if self.autoscaling.knative and mode == "Standard":
                raise ValueError(
                    f"autoscaling on {self.autoscaling.metric!r} is Knative's and needs Serverless mode: "
                    "use 'cpu' or 'pending_requests' in Standard mode"
                )
        if self.canary_traffic_percent is not None and mode == "Standard":
            raise ValueError(
                "canary_traffic_percent needs Serverless mode (KServe splits traffic between Knative revisions): "
                "drop it, or do not combine it with Standard mode / KEDA autoscaling"
            )

    @property
    def mode(self) -> DeploymentMode:
        """The KServe deployment mode this spec runs in."""
        if self.deployment_mode is not None:
            return self.deployment_mode
        if self.autoscaling is not None and self.autoscaling.uses_prometheus:
            return "Standard"
        return "Serverless"
