"""An OpenAPI 3 document of the REST frontend, served at ``GET /v2/openapi.json``.

It describes the Open Inference Protocol v2 endpoints and Triton's extensions the server answers
(model config, statistics, repository, system/CUDA shared memory), with the request bodies' schemas,
so that API tools (Swagger UI, schemathesis, client generators) see what the server accepts. The
fuzz tests (``tests/serving_runtime/test_fuzz.py``, ``make fuzz``) generate requests from it.
"""

from __future__ import annotations

from typing import Any

_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "FP32", "FP64", "BF16", "BYTES"]  # fmt: skip

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_PARAMETERS = {"type": "object", "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"},
                                                                     {"type": "boolean"}]}}  # fmt: skip
_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Parameters": _PARAMETERS,
    "InferInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": _DATATYPES},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "data": {"type": "array", "items": {}},
        },
    },
    "InferOutputRequest": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": {"$ref": "#/components/schemas/Parameters"}},
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferInput"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/InferOutputRequest"}},
        },
    },
    "RepositoryIndexRequest": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "LoadRequest": {"type": "object", "properties": {"parameters": {"type": "object"}}},
    "ShmRegister": {
        "type": "object",
        "required": ["key", "byte_size"],
        "properties": {
            "key": {"type": "string"},
            "offset": {"type": "integer", "minimum": 0},
            "byte_size": {"type": "integer", "minimum": 0},
        },
    },
}


def _json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _responses(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "success", "content": {"application/json": {"schema": {}}}}}
    for code in codes:
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        out[str(code)] = {"description": "error", "content": error}
    return out


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for n in names]


def _get(summary: str, *params: str, errors: tuple[int, ...] = (404, 503)) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": _path_params(*params), "responses": _responses(*errors)}}


def _post(summary: str, body: str | None, *params: str, errors: tuple[int, ...] = (400, 404, 503)) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": _path_params(*params)}
    operation["responses"] = _responses(*errors)
    if body is not None:
        operation["requestBody"] = _json_body(body)
    return {"post": operation}


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2/health/live": _get("Server liveness"),
        "/v2/health/ready": _get("Server readiness (503 while not ready)"),
        "/v2": _get("Server metadata"),
        "/v2/models/stats": _get("Statistics of every model"),
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        "/v2/openapi.json": _get("This document"),
        "/v2/repository/index": _post("Repository index", "RepositoryIndexRequest"),
        "/v2/repository/models/{model}/load": _post("Load a model (explicit mode)", "LoadRequest", "model"),
        "/v2/repository/models/{model}/unload": _post("Unload a model (explicit mode)", "LoadRequest", "model"),
    }
    for prefix, params in (("/v2/models/{model}", ("model",)), ("/v2/models/{model}/versions/{version}",
                                                                 ("model", "version"))):  # fmt: skip
        paths[prefix] = _get("Model metadata", *params)
        paths[prefix + "/ready"] = _get("Model readiness", *params)
        paths[prefix + "/config"] = _get("Model configuration (Triton)", *params)
        paths[prefix + "/stats"] = _get("Model statistics (Triton)", *params)
        paths[prefix + "/infer"] = _post("Inference (JSON; the binary extension too)", "InferRequest", *params,
                                         errors=(400, 404, 408, 413, 499, 503))  # fmt: skip
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        base = f"/v2/{kind}"
        paths[f"{base}/status"] = _get("Registered regions")
        paths[f"{base}/region/{{name}}/status"] = _get("One region", "name")
        paths[f"{base}/region/{{name}}/register"] = _post("Register a region", "ShmRegister", "name")
        paths[f"{base}/unregister"] = _post("Unregister every region", None)
        paths[f"{base}/region/{{name}}/unregister"] = _post("Unregister a region", None, "name")
    return paths


def openapi_document(server_version: str = "") -> dict[str, Any]:
    """The OpenAPI 3.0 document of the REST endpoints (a fresh dict each call)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "shipyard serving runtime (Open Inference Protocol v2 + Triton extensions)",
            "version": server_version or "0",
        },
        "paths": _paths(),
        "components": {"schemas": _SCHEMAS},
    }
