"""The gRPC frontend: tritonclient's ``inference.GRPCInferenceService`` on grpc.aio.

Each ``ServingError`` becomes its gRPC status (``grpc_code``) with the message. System shared
memory's RPCs come from ``shm_endpoints.SharedMemoryServicer``; tracing and log settings are not
implemented (UNIMPLEMENTED from the generated base class).

Types: models and the manager are ``ModelLike``/``ManagerLike`` (``types.py``); the remaining
``Any`` are protobuf messages and grpc's call context, which tritonclient and grpc ship without
type stubs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from shipyard.serving_runtime.errors import InvalidArgument, ModelNotFound, ServingError
from shipyard.serving_runtime.protocol import decoupled, grpc_codec
from shipyard.serving_runtime.protocol.service import InferenceService
from shipyard.serving_runtime.protocol.shared_memory import ShmBinding
from shipyard.serving_runtime.protocol.shm_endpoints import SharedMemoryServicer
from shipyard.serving_runtime.protocol.types import DecodedRequest, ModelLike
from shipyard.serving_runtime.protocol.validate import build_request, collect_outputs, rules_for
from shipyard.serving_runtime.scheduling.api import InferenceRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

# Generous limits: a batch of images is easily above gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


def server_options(max_pending_rpcs: int, max_streams_per_connection: int = 0) -> list[tuple[str, Any]]:
    """``SERVER_OPTIONS`` plus grpc core's limits.

    ``max_pending_rpcs``: calls waiting for the Python server to take them; past it core starts
    refusing new calls (CANCELLED) and past twice that it refuses all, without any Python work; 0
    keeps grpc's defaults (1000 and 3000). ``max_streams_per_connection``: HTTP/2
    SETTINGS_MAX_CONCURRENT_STREAMS, the calls one client connection may have open at once (more
    wait in the client's channel); 0: no limit.
    """
    options = list(SERVER_OPTIONS)
    if max_pending_rpcs > 0:
        options += [
            ("grpc.server.max_pending_requests", max_pending_rpcs),
            ("grpc.server.max_pending_requests_hard_limit", 2 * max_pending_rpcs),
        ]
    if max_streams_per_connection > 0:
        # overload_protection off: count open streams as HTTP/2 does. grpc's default also counts
        # streams that have ended but are not freed yet, so a client that keeps to the limit still
        # sees calls refused at random (UNAVAILABLE, "Stream removed", REFUSED_STREAM).
        options += [("grpc.max_concurrent_streams", max_streams_per_connection), ("grpc.http.overload_protection", 0)]
    return options


async def _call(context: Any, work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except ServingError as exc:
        await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
        raise  # unreachable: abort raises
    except Exception as exc:
        if isinstance(exc, grpc.aio.AbortError):
            raise
        log.exception("unexpected error in a gRPC call")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise


def _parameter_value(param: Any) -> object:
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


class GrpcInferenceServicer(SharedMemoryServicer, service_pb2_grpc.GRPCInferenceServiceServicer):
    """Adapts ``InferenceService`` to the generated servicer interface."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=self.service.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.service.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.service.server_metadata()
        return service_pb2.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            try:
                ready = self.service.model_ready(request.name, request.version)
            except ModelNotFound:
                ready = False
            return service_pb2.ModelReadyResponse(ready=ready)

        return await _call(context, work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            meta = self.service.model_metadata(request.name, request.version)
            response = service_pb2.ModelMetadataResponse(
                name=meta["name"],
                versions=[str(v) for v in meta.get("versions", ())],
                platform=meta.get("platform", ""),
            )
            for tensor in meta.get("inputs", ()):
                response.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
            for tensor in meta.get("outputs", ()):
                response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
            return response

        return await _call(context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            response = service_pb2.ModelConfigResponse()
            response.config.CopyFrom(self.service.model_config(request.name, request.version))
            return response

        return await _call(context, work)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            entries = self.service.statistics(request.name or None, request.version or None)
            return json_format.ParseDict(
                {"model_stats": entries}, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True
            )

        return await _call(context, work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:  # _call, inlined: this is the hot path
            return await self._infer(request)
        except ServingError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
            raise  # unreachable: abort raises
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("unexpected error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            raise

    async def _infer(self, request: Any) -> Any:
        service = self.service
        name, version = request.model_name, request.model_version
        model = service.model(name, version)  # 404 before decoding
        if getattr(model, "decoupled", False):
            decoupled.refuse_unary(model, "grpc")
        decoded: DecodedRequest | None = None
        binding: ShmBinding | None = None

        def build(served: ModelLike) -> InferenceRequest:
            nonlocal decoded, binding
            fast = grpc_codec.fast_request(rules_for(served), request)
            if fast is not None:
                return fast
            if decoded is None:
                decoded = grpc_codec.decode_infer_request(request)
                binding = service.shared_memory.bind(decoded)
            return build_request(served, decoded)

        model, built, results = await service.execute(name, version, build, model)
        outputs = collect_outputs(model, built, results)
        if binding is not None:
            outputs = binding.write(outputs)
        return grpc_codec.encode_infer_response(
            model.name, str(model.version), request.id or None, outputs, getattr(results, "parameters", None)
        )

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Requests on a stream run concurrently; each gets one response (in completion order,
        carrying its ``id``) or an ``error_message``; the stream stays open after an error."""
        responses: asyncio.Queue[Any] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                if getattr(self.service.model(request.model_name, request.model_version), "decoupled", False):
                    async for message in decoupled.stream(self, request):
                        await responses.put(message)
                    return
                response = service_pb2.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ServingError as exc:
                response = service_pb2.ModelStreamInferResponse(error_message=exc.message)
            except Exception as exc:
                log.exception("unexpected error in a streamed request")
                response = service_pb2.ModelStreamInferResponse(error_message=f"internal error: {exc}")
            await responses.put(response)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(set(running))
            finally:
                await responses.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            response = service_pb2.RepositoryIndexResponse()
            for entry in self.service.repository_index(request.ready):
                response.models.add(**{k: v for k, v in entry.items() if k in ("name", "version", "state", "reason")})
            return response

        return await _call(context, work)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            params: dict[str, Any] = {}
            for key, param in request.parameters.items():
                if key.startswith("file:"):
                    raise InvalidArgument(f"loading model files through the API ({key}) is not supported")
                params[key] = _parameter_value(param)
            await self.service.load(request.model_name, params)
            return service_pb2.RepositoryModelLoadResponse()

        return await _call(context, work)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            await self.service.unload(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()

        return await _call(context, work)


def add_to_server(server: Any, service: InferenceService) -> GrpcInferenceServicer:
    """Register the servicer on a ``grpc.aio`` server."""
    servicer = GrpcInferenceServicer(service)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return servicer
