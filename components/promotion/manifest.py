"""Kubernetes manifests for the promotion service: a Deployment (one replica, Recreate: one writer of the
state file) and a Service that MLflow's webhooks and the model's clients reach.

``promotion_manifests(*, image, tracking_uri, claim, name="shipyard-promotion", namespace="default",
secret_name="shipyard-webhook", alias="champion", canary_percent=20.0, watch_s=60.0, poll_s=0.0)
-> list[dict]``. The PVC ``claim`` holds the model repository and the state (mounted at /mnt/models); the HMAC
secret comes from the Secret ``secret_name`` (key ``secret``). The runtime runs in the same pod (the local target).
"""

from __future__ import annotations

from typing import Any

PORTS = {"webhooks": 8090, "http": 8000, "grpc": 8001}


def promotion_manifests(
    *,
    image: str,
    tracking_uri: str,
    claim: str,
    name: str = "shipyard-promotion",
    namespace: str = "default",
    secret_name: str = "shipyard-webhook",
    alias: str = "champion",
    canary_percent: float = 20.0,
    watch_s: float = 60.0,
    poll_s: float = 0.0,
) -> list[dict[str, Any]]:
    """The Deployment and the Service as plain dicts (``kubectl apply -f -`` takes their YAML)."""
    if not image or not tracking_uri or not claim:
        raise ValueError("image, tracking_uri and claim (a PersistentVolumeClaim for the repository) are required")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "shipyard"}
    args = ["promotion", "serve", "--host", "0.0.0.0", "--port", str(PORTS["webhooks"]),
            "--repository", "/mnt/models/repository", "--state-dir", "/mnt/models/promotion",
            "--tracking-uri", tracking_uri, "--alias", alias, "--canary-percent", f"{canary_percent:g}",
            "--watch-s", f"{watch_s:g}", "--poll-s", f"{poll_s:g}",
            "--http-port", str(PORTS["http"]), "--grpc-port", str(PORTS["grpc"])]  # fmt: skip
    secret_ref = {"name": secret_name, "key": "secret"}
    container = {
        "name": "promotion",
        "image": image,
        "command": ["shipyard"],
        "args": args,
        "env": [{"name": "SHIPYARD_WEBHOOK_SECRET", "valueFrom": {"secretKeyRef": secret_ref}}],
        "ports": [{"name": k, "containerPort": v} for k, v in PORTS.items()],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORTS["webhooks"]}, "periodSeconds": 5},
        "volumeMounts": [{"name": "models", "mountPath": "/mnt/models"}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": k, "port": v, "targetPort": v} for k, v in PORTS.items()]},
    }
    return [deployment, service]
