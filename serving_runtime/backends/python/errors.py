"""A Python model's ``TritonError`` codes as the runtime's errors (HTTP status, gRPC code)."""

from __future__ import annotations

from shipyard.serving_runtime.errors import BackendError, ServingError

# TritonError code -> (HTTP status, gRPC status name), as Triton reports each TRITONSERVER_Error code.
_STATUS: dict[int, tuple[int, str]] = {
    0: (500, "UNKNOWN"),
    1: (500, "INTERNAL"),
    2: (404, "NOT_FOUND"),
    3: (400, "INVALID_ARGUMENT"),
    4: (503, "UNAVAILABLE"),
    5: (400, "UNIMPLEMENTED"),
    6: (409, "ALREADY_EXISTS"),
    7: (499, "CANCELLED"),
}


class ModelResponseError(BackendError):
    """An error a Python model put in its response (``InferenceResponse(error=TritonError(...))``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.http_status, self.grpc_code = _STATUS.get(code, _STATUS[1])


def error_for_code(message: str, code: int) -> ServingError:
    """The ServingError for a ``TritonError`` with ``code``."""
    return ModelResponseError(message, code)


def code_for_error(error: ServingError) -> int:
    """The ``TritonError`` code for a runtime error (what a BLS caller sees in ``error().code()``)."""
    for code, (_, grpc_code) in _STATUS.items():
        if grpc_code == error.grpc_code:
            return code
    return 1
