"""Decoupled models (``model_transaction_policy { decoupled: true }``) on the wire.

A decoupled model answers a request with any number of responses and then the final flag, so it
is served over gRPC ``ModelStreamInfer`` only, as in Triton; unary ``ModelInfer`` and REST
``/infer`` refuse it with Triton's messages (UNIMPLEMENTED / 501). On the stream, each response
is sent as it comes, carrying the request's ``id``; a final flag without a response sends nothing
unless the client asked for ``triton_enable_empty_final_response``, in which case every response
carries the ``triton_final_response`` parameter and the final flag alone sends an empty one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from shipyard.serving_runtime.errors import ServingError

EMPTY_FINAL = "triton_enable_empty_final_response"
FINAL = "triton_final_response"


class DecoupledNotSupported(ServingError):
    """A unary call to a decoupled model."""

    http_status = 501
    grpc_code = "UNIMPLEMENTED"
    reason = "REJECTED"


def refuse_unary(model: Any, transport: str) -> None:
    """Raises: DecoupledNotSupported when ``model`` is decoupled (``transport``: "grpc" or "http")."""
    if getattr(model, "decoupled", False):
        where = "ModelInfer RPC" if transport == "grpc" else "HTTP end point"
        raise DecoupledNotSupported(f"{where} doesn't support models with decoupled transaction policy")


async def stream(servicer: Any, request: Any) -> AsyncIterator[Any]:
    """The ``ModelStreamInferResponse`` messages for one streamed request to a decoupled model.

    Raises: ServingError before the first response when the request is refused.
    """
    from tritonclient.grpc import service_pb2

    from shipyard.serving_runtime.protocol import grpc_codec
    from shipyard.serving_runtime.protocol.validate import build_request, collect_outputs

    service = servicer.service
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[dict[str, np.ndarray] | None, Exception | None, bool]] = asyncio.Queue()
    empty_final = False
    decoded = grpc_codec.decode_infer_request(request)
    if EMPTY_FINAL in decoded.parameters:
        empty_final = bool(decoded.parameters.pop(EMPTY_FINAL))
    built: Any = None

    def respond(outputs: dict[str, np.ndarray] | None, error: Exception | None, final: bool) -> None:
        loop.call_soon_threadsafe(items.put_nowait, (outputs, error, final))

    def build(served: Any) -> Any:
        nonlocal built
        built = build_request(served, decoded)
        built.on_response = respond
        return built

    model = service.model(request.model_name, request.model_version)
    task = asyncio.ensure_future(service.execute(request.model_name, request.model_version, build, model))

    def on_done(done: asyncio.Future[Any]) -> None:
        error = None if done.cancelled() else done.exception()
        if isinstance(error, Exception):
            items.put_nowait((None, error, True))

    task.add_done_callback(on_done)
    try:
        while True:
            outputs, error, final = await items.get()
            if error is not None:
                message = error.message if isinstance(error, ServingError) else str(error)
                yield service_pb2.ModelStreamInferResponse(error_message=message)
                if final:
                    return
                continue
            if outputs is None and not empty_final:
                if final:
                    return
                continue
            encoded = collect_outputs(model, built, outputs) if outputs is not None else []
            response = grpc_codec.encode_infer_response(
                model.name, str(model.version), request.id or None, encoded, getattr(outputs, "parameters", None)
            )
            if empty_final:
                response.parameters[FINAL].bool_param = final
            yield service_pb2.ModelStreamInferResponse(infer_response=response)
            if final:
                return
    finally:  # the client went away (or the final response was sent): tell the model
        if not task.done():
            task.cancel()
        hook = getattr(built, "cancel_hook", None)
        if hook is not None:
            hook()
