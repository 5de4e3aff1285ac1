"""The REST frontend: Open Inference Protocol v2 plus Triton's config, statistics and repository
extensions, as a Starlette app (served by uvicorn with uvloop/httptools, see ``server.py``).

Every error is JSON ``{"error": "<message>"}`` with the status of its ``ServingError``.
Responses carry the request's ``id`` only when the request had one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.serving_runtime.config import config_to_dict
from shipyard.serving_runtime.errors import InvalidArgument, ServingError
from shipyard.serving_runtime.protocol import decoupled, http_limits, rest_codec, shm_endpoints
from shipyard.serving_runtime.protocol.http_limits import HttpLimits
from shipyard.serving_runtime.protocol.rest_codec import json_dumps
from shipyard.serving_runtime.protocol.service import InferenceService

log = logging.getLogger(__name__)

JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json_dumps(obj), status_code=status, media_type=JSON)


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def _guard(handler: Handler) -> Handler:
    """Turn ServingError into its status and unexpected exceptions into 500, both as JSON."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ServingError as exc:
            return error_response(exc.message, exc.http_status)
        except Exception as exc:
            log.exception("unexpected error serving %s %s", request.method, request.url.path)
            return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)

    return guarded


async def _body(request: Request, limits: HttpLimits) -> bytes:
    """The request body, size- and time-bounded, decompressed within its limit (http_limits.py)."""
    raw = await http_limits.read_body(request, limits)
    return await http_limits.decompress(raw, request.headers.get("content-encoding"), limits)


def build_app(
    service: InferenceService,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    limits: HttpLimits | None = None,
    served: Callable[[str, str | None], None] | None = None,
) -> Starlette:
    """The REST app over ``service``. ``metrics`` returns (body, content type) for ``GET /metrics``;
    ``limits`` bound request bodies (default: ``HttpLimits()``); ``served(model, version)`` is told of
    each inference answered (the fast lane registers its paths so, ``rest_fast.py``)."""
    # One function on purpose (over ~80 lines): each handler is a few lines closing over
    # ``service``, ``bounds`` and ``metrics``, and the route table at the end names every one of them;
    # an extension adds its routes with one line there (``shm_endpoints.rest_routes``).
    bounds = limits or HttpLimits()

    async def _json_body(request: Request, what: str) -> dict[str, Any]:
        return rest_codec.parse_json_object(await _body(request, bounds), what)

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        if service.ready():
            return json_response({"ready": True})
        return error_response("server is not ready (models loading, not all models available, or stopping)", 503)

    async def server_metadata(request: Request) -> Response:
        return json_response(service.server_metadata())

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        return json_response(service.model_metadata(params["model"], params.get("version")))

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        if service.model_ready(params["model"], params.get("version")):
            return json_response({"name": params["model"], "ready": True})
        return error_response(f"model {params['model']!r} is not ready", 503)

    async def model_config(request: Request) -> Response:
        params = request.path_params
        return json_response(config_to_dict(service.model_config(params["model"], params.get("version"))))

    async def model_stats(request: Request) -> Response:
        params = request.path_params
        return json_response({"model_stats": service.statistics(params.get("model"), params.get("version"))})

    async def infer(request: Request) -> Response:
        params = request.path_params
        name, version = params["model"], params.get("version")
        decoupled.refuse_unary(service.model(name, version), "http")  # 404 / 503 / 501 before reading the body
        body = await _body(request, bounds)
        header_length = rest_codec.parse_header_length(request.headers.get(rest_codec.HEADER_LENGTH), len(body))
        decoded = rest_codec.decode_request(body, header_length)
        result = await http_limits.infer_or_cancel(request, lambda: service.infer(name, version, decoded))
        content, json_length = rest_codec.encode_response(
            result.model_name, result.model_version, decoded, result.outputs, result.parameters
        )
        if served is not None:
            served(name, version)
        if json_length is None:
            return Response(content, media_type=JSON)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length)},
        )

    async def repository_index(request: Request) -> Response:
        body = await _json_body(request, "repository index request")
        ready_only = body.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidArgument(f"'ready' must be true or false, got {ready_only!r}")
        return json_response(service.repository_index(ready_only))

    async def repository_load(request: Request) -> Response:
        body = await _json_body(request, "model load request")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidArgument("'parameters' must be an object")
        await service.load(request.path_params["model"], parameters)
        return json_response({})

    async def repository_unload(request: Request) -> Response:
        await _json_body(request, "model unload request")
        await service.unload(request.path_params["model"])
        return json_response({})

    async def metrics_endpoint(request: Request) -> Response:
        if metrics is None:
            return error_response("metrics are not available in this build", 404)
        body, content_type = metrics()
        return Response(body, media_type=content_type)

    async def openapi_endpoint(request: Request) -> Response:
        from shipyard.serving_runtime.protocol.openapi import openapi_document

        return json_response(openapi_document(str(service.server_metadata().get("version", ""))))

    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", _guard(live), methods=["GET"]),
        Route("/v2/health/ready", _guard(ready), methods=["GET"]),
        Route("/v2", _guard(server_metadata), methods=["GET"]),
        Route("/v2/models/stats", _guard(model_stats), methods=["GET"]),
        Route("/v2/repository/index", _guard(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _guard(repository_load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _guard(repository_unload), methods=["POST"]),
        Route("/metrics", _guard(metrics_endpoint), methods=["GET"]),
        Route("/v2/openapi.json", _guard(openapi_endpoint), methods=["GET"]),
        *shm_endpoints.rest_routes(service, _guard, _json_body, json_response),
    ]
    for prefix in (model, version):
        routes += [
            Route(prefix, _guard(model_metadata), methods=["GET"]),
            Route(prefix + "/ready", _guard(model_ready), methods=["GET"]),
            Route(prefix + "/config", _guard(model_config), methods=["GET"]),
            Route(prefix + "/stats", _guard(model_stats), methods=["GET"]),
            Route(prefix + "/infer", _guard(infer), methods=["POST"]),
        ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        if status == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(str(detail), status)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
