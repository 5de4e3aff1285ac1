"""The transport floor: a bare ``grpc.aio`` GRPCInferenceService whose ModelInfer returns a canned response.

It parses each request (as any real server must) and answers with the canned ``ModelInferResponse`` for
the requested model name, so it measures what a Python gRPC server costs on this machine with no model.

Usage: ``python -m benchmarks.servers.echo --port P --responses FILE`` where FILE is JSON
``{"model name": "<hex of serialized ModelInferResponse>"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from benchmarks.loadgen import GRPC_OPTIONS


class EchoServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer with a canned response; liveness and readiness are always true."""

    def __init__(self, responses: dict[str, bytes]) -> None:
        self._responses = {name: service_pb2.ModelInferResponse.FromString(raw) for name, raw in responses.items()}

    async def ModelInfer(self, request, context):  # type: ignore[no-untyped-def]
        response = self._responses.get(request.model_name)
        if response is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name!r}")
        return response

    async def ServerLive(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # type: ignore[no-untyped-def]
        return service_pb2.ServerReadyResponse(ready=True)


async def serve(port: int, responses: dict[str, bytes]) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM/SIGINT."""
    server = grpc.aio.server(options=GRPC_OPTIONS)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(responses), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", type=Path, required=True)
    args = parser.parse_args()
    responses = {name: bytes.fromhex(raw) for name, raw in json.loads(args.responses.read_text()).items()}
    asyncio.run(serve(args.port, responses))


if __name__ == "__main__":
    main()
