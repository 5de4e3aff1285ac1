"""Errors raised inside the runtime, each mapped to one protocol status.

Frontends (REST, gRPC) translate these into HTTP status codes and gRPC status codes; the
message is always shown to the client, so it must name the problem and, where possible, the fix.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class. ``http_status`` and ``grpc_code`` (a ``grpc.StatusCode`` name) say how to report it."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    reason: str = "OTHER"  # the ``reason`` label of nv_inference_request_failure

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    """A malformed request: wrong input name, shape, datatype, size, missing input, batch too big."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    reason = "REJECTED"


class ModelNotFound(ServingError):
    """An unknown model or version."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    reason = "REJECTED"


class ModelNotReady(ServingError):
    """A known model that is not loaded (loading, unloading, or failed to load)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    reason = "REJECTED"


class QueueFull(ServingError):
    """The model's queue is at ``max_queue_size``: rejected at once, retry later."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    reason = "REJECTED"


class RequestTimeout(ServingError):
    """The request waited in the queue past its timeout and was rejected before execution."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    reason = "CANCELED"


class RequestCancelled(ServingError):
    """The client went away; the request never reaches the backend."""

    http_status = 499
    grpc_code = "CANCELLED"
    reason = "CANCELED"


class BackendError(ServingError):
    """The backend failed to execute a batch. Only the requests of that batch fail."""

    http_status = 500
    grpc_code = "INTERNAL"
    reason = "BACKEND"


class ModelConfigError(ServingError):
    """A broken ``config.pbtxt`` or model directory. The message names the file and line."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    reason = "OTHER"


class ModelLoadError(ServingError):
    """A model version failed to load (broken file, unsupported platform, no GPU for KIND_GPU)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    reason = "OTHER"
