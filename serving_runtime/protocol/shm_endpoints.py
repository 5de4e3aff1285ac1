"""The shared-memory extension's endpoints over REST (``/v2/systemsharedmemory/...``,
``/v2/cudasharedmemory/...``) and gRPC (``SystemSharedMemory*``, ``CudaSharedMemory*``), over the
service's ``SharedMemoryRegistry`` (``shared_memory.py``). CUDA regions need a GPU build: their
register answers Triton's "GPUs not supported", their status lists none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import service_pb2

from shipyard.serving_runtime.errors import InvalidArgument, ServingError
from shipyard.serving_runtime.protocol.shared_memory import RegionNotFound, cuda_unsupported

if TYPE_CHECKING:
    from shipyard.serving_runtime.protocol.service import InferenceService

Handler = Callable[[Request], Awaitable[Response]]


def _int_field(body: dict[str, Any], key: str, name: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"shared memory region '{name}': '{key}' must be a non-negative integer, got {value!r}")
    return value


def rest_routes(
    service: InferenceService,
    guard: Callable[[Handler], Handler],
    json_body: Callable[[Request, str], Awaitable[dict[str, Any]]],
    json_response: Callable[[Any], Response],
) -> list[Route]:
    """The REST routes; ``guard`` turns ServingError into its status, as for every other route."""
    registry = service.shared_memory

    async def status(request: Request) -> Response:
        return json_response(registry.status(request.path_params.get("name", "")))

    async def register(request: Request) -> Response:
        name = request.path_params["name"]
        body = await json_body(request, "shared memory register request")
        key = body.get("key")
        if not isinstance(key, str):
            raise InvalidArgument(f"shared memory region '{name}': 'key' must be a string")
        registry.register(name, key, _int_field(body, "offset", name, 0), _int_field(body, "byte_size", name))
        return json_response({})

    async def unregister(request: Request) -> Response:
        registry.unregister(request.path_params.get("name", ""))
        return json_response({})

    async def cuda_status(request: Request) -> Response:
        name = request.path_params.get("name", "")
        if name:
            raise cuda_not_found(name)
        return json_response([])

    async def cuda_register(request: Request) -> Response:
        raise cuda_unsupported(request.path_params["name"])

    routes: list[Route] = []
    for kind, on_status, on_register, on_unregister in (
        ("systemsharedmemory", status, register, unregister),
        ("cudasharedmemory", cuda_status, cuda_register, unregister_nothing),
    ):
        base = f"/v2/{kind}"
        routes += [
            Route(f"{base}/status", guard(on_status), methods=["GET"]),
            Route(f"{base}/region/{{name}}/status", guard(on_status), methods=["GET"]),
            Route(f"{base}/region/{{name}}/register", guard(on_register), methods=["POST"]),
            Route(f"{base}/unregister", guard(on_unregister), methods=["POST"]),
            Route(f"{base}/region/{{name}}/unregister", guard(on_unregister), methods=["POST"]),
        ]
    return routes


async def unregister_nothing(request: Request) -> Response:
    """CUDA regions cannot be registered here, so there is never one to unregister."""
    return Response(b"{}", media_type="application/json")


def cuda_not_found(name: str) -> ServingError:
    return RegionNotFound(f"Unable to find cuda shared memory region: '{name}'")


async def _answer(context: Any, work: Callable[[], Any]) -> Any:
    try:
        return work()
    except ServingError as exc:
        await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
        raise  # unreachable: abort raises


class SharedMemoryServicer:
    """The gRPC servicer's shared-memory methods (mixed into ``GrpcInferenceServicer``)."""

    service: InferenceService

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        def work() -> Any:
            response = service_pb2.SystemSharedMemoryStatusResponse()
            for entry in self.service.shared_memory.status(request.name):
                response.regions[str(entry["name"])].CopyFrom(
                    service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(**entry)
                )
            return response

        return await _answer(context, work)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        def work() -> Any:
            self.service.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
            return service_pb2.SystemSharedMemoryRegisterResponse()

        return await _answer(context, work)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        self.service.shared_memory.unregister(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        def work() -> Any:
            if request.name:
                raise cuda_not_found(request.name)
            return service_pb2.CudaSharedMemoryStatusResponse()

        return await _answer(context, work)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        def work() -> Any:
            raise cuda_unsupported(request.name)

        return await _answer(context, work)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return service_pb2.CudaSharedMemoryUnregisterResponse()
