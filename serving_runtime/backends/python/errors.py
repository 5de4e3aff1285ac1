"""A Python model's ``TritonError`` codes as the runtime's errors (HTTP status, gRPC code)."""

from __future__ import annotations

from shipyard.serving_runtime.errors import BackendError, ServingError

# TritonError code -> (HTTP status, gRPC status name), as Triton's frontends report each
# TRITONSERVER_Error code (HTTP: 500 INTERNAL, 404, 503, 501 UNSUPPORTED, else 400).
_STATUS: dict[int, tuple[int, str]] = {
    0: (400, "UNKNOWN"),
    1: (500, "INTERNAL"),
    2: (404, "NOT_FOUND"),
    3: (400, "INVALID_ARGUMENT"),
    4: (503, "UNAVAILABLE"),
    5: (501, "UNIMPLEMENTED"),
    6: (400, "ALREADY_EXISTS"),
    7: (400, "CANCELLED"),
}


class ModelResponseError(BackendError):
    """An error a Python model put in its response (``InferenceResponse(error=TritonError(...))``).

    One subclass per code (``error_for_code``), so ``type(error)(message)`` keeps the status (the
    ensemble scheduler re-raises a step's error that way with its own prefix).
    """

    code = 1
    # The model ran and answered (with an error): statistics count the request as a success, as
    # Triton's do (checked against Triton 2.51 by tests/conformance). The client still gets the error.
    counts_as_success = True


def _subclass(code: int) -> type[ModelResponseError]:
    http_status, grpc_code = _STATUS[code]
    attributes = {"code": code, "http_status": http_status, "grpc_code": grpc_code}
    return type(f"ModelResponseError_{grpc_code}", (ModelResponseError,), attributes)


_CLASSES = {code: _subclass(code) for code in _STATUS}


def error_for_code(message: str, code: int) -> ServingError:
    """The ServingError for a ``TritonError`` with ``code`` (unknown codes: INTERNAL)."""
    return _CLASSES.get(code, _CLASSES[1])(message)


def code_for_error(error: ServingError) -> int:
    """The ``TritonError`` code for a runtime error (what a BLS caller sees in ``error().code()``)."""
    for code, (_, grpc_code) in _STATUS.items():
        if grpc_code == error.grpc_code:
            return code
    return 1
