"""Deploy settings are checked when they are made, with errors that name the value and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from shipyard.components.deploy import Autoscaling, InferenceServiceSpec, RuntimeSpec


def _spec(**kw: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec(**{"name": "digits", "storage_uri": "s3://b/repo", **kw})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "Digits_CNN"}, "'Digits_CNN' is not a valid Kubernetes name"),
        ({"storage_uri": "/tmp/repo"}, "has no scheme"),
        ({"model_format": "sklearn"}, "model_format 'sklearn'"),
        ({"cpu": "two"}, "cpu 'two' is not a Kubernetes quantity"),
        ({"min_replicas": 3, "max_replicas": 2}, "min=3 max=2"),
        ({"canary_traffic_percent": 120}, "canary_traffic_percent 120"),
        ({"gpus": -1}, "gpus -1"),
        ({"deployment_mode": "RawDeployment"}, "'Standard'"),
        (
            {"autoscaling": Autoscaling("pending_requests"), "deployment_mode": "Serverless"},
            "needs KEDA",
        ),
        ({"autoscaling": Autoscaling("rps"), "deployment_mode": "Standard"}, "needs Serverless"),
        ({"autoscaling": Autoscaling("pending_requests"), "canary_traffic_percent": 10}, "canary_traffic_percent"),
    ],
)
def test_bad_inference_service_settings_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _spec(**kw)


def test_mode_follows_the_autoscaler() -> None:
    assert _spec().mode == "Serverless"
    assert _spec(autoscaling=Autoscaling("queue_time_us", target=5000)).mode == "Standard"
    assert _spec(autoscaling=Autoscaling("cpu", 60), deployment_mode="Standard").mode == "Standard"


def test_bad_runtime_and_autoscaling_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="both 9000"):
        RuntimeSpec(http_port=9000, grpc_port=9000)
    with pytest.raises(ValueError, match="image is empty"):
        RuntimeSpec(image=" ")
    with pytest.raises(ValueError, match="metric 'gpu_util' is not supported"):
        Autoscaling("gpu_util")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target 0 must be > 0"):
        Autoscaling("rps", target=0)


def test_runtime_args_are_the_runtime_flags() -> None:
    args = RuntimeSpec(http_port=9000, grpc_port=9001, extra_args=("--log-level=debug",)).args()
    assert args == [
        "--model-repository=/mnt/models",
        "--http-port=9000",
        "--grpc-port=9001",
        "--graceful-shutdown-secs=30",  # the drain, which the pod's termination grace period covers
        "--log-level=debug",
    ]
    # test_deploy_runtime_files.py checks that the runtime's own parser takes every one of them
