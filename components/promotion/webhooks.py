"""Verify an MLflow 3 webhook delivery: HMAC-SHA256 signature, timestamp window, one use per delivery id.

MLflow signs ``f"{delivery_id}.{timestamp}.{body}"`` with the webhook's secret and sends ``X-MLflow-Signature:
v1,<base64>``, ``X-MLflow-Timestamp`` (unix seconds) and ``X-MLflow-Delivery-Id``.

- ``verify(headers, body, secret, *, now, tolerance_s=300) -> (delivery_id, event)``; raises WebhookRefused
  (401: unsigned, bad signature, stale timestamp; 400: not JSON). Replays of an accepted delivery id are refused
  by the caller's ``State.accept_delivery`` (409).
- ``sign(secret, delivery_id, timestamp, body) -> str`` (what MLflow sends; for tests and tools)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"


class WebhookRefused(Exception):
    """A delivery we must not act on; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    headers: Mapping[str, str], body: bytes, secret: str, *, now: float, tolerance_s: float = 300.0
) -> tuple[str, dict[str, Any]]:
    """The delivery id and the event (``entity``, ``action``, ``data``) of a genuine, fresh delivery."""
    lower = {k.lower(): v for k, v in headers.items()}
    signature, stamp, delivery = (lower.get(h) for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER))
    if not signature or not stamp or not delivery:
        raise WebhookRefused(401, "unsigned delivery: create the MLflow webhook with secret=... (the service's secret)")
    try:
        sent = float(stamp)
    except ValueError:
        raise WebhookRefused(401, f"bad {TIMESTAMP_HEADER} {stamp!r}") from None
    if abs(now - sent) > tolerance_s:
        raise WebhookRefused(401, f"stale delivery: timestamp {abs(now - sent):.0f} s off (> {tolerance_s:g} s)")
    text = body.decode("utf-8", "replace")
    if not hmac.compare_digest(sign(secret, delivery, stamp, text), signature):
        raise WebhookRefused(401, "bad signature: the webhook's secret differs from the service's")
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        raise WebhookRefused(400, "the body is not JSON") from None
    if not isinstance(event, dict) or "entity" not in event or "data" not in event:
        raise WebhookRefused(400, "not an MLflow webhook event (no entity/data)")
    return delivery, event
