"""BLS on the server's side: a Python model's ``InferenceRequest(...).exec()`` runs here.

The stub sends ``("bls", call, model, version, tensors, requested, parameters, timeout_us,
request_id, decoupled)``; the request is validated and run like a client's (through the target
model's scheduler, so it batches with other traffic) on the server's event loop, and the answer
goes back as ``("bls_r", call, payload, final)``, where payload is ``("ok", tensors, parameters)``
or ``("err", message, TritonError code)``. Errors never raise in the model: they come back in
the response, as in Triton.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.serving_runtime.backends.python.errors import code_for_error
from shipyard.serving_runtime.errors import ServingError

if TYPE_CHECKING:
    from shipyard.serving_runtime.backends.python.instance import PythonInstance

log = logging.getLogger("shipyard.serving_runtime.backends.python")


class BlsRouter:
    """Runs a stub's BLS calls on ``loop`` against the models ``manager`` serves."""

    def __init__(self, manager: Any, loop: asyncio.AbstractEventLoop) -> None:
        from shipyard.serving_runtime.protocol.service import InferenceService

        self.service = InferenceService(manager)
        self.loop = loop

    def __call__(self, instance: PythonInstance, message: tuple[Any, ...]) -> None:
        """On the stub's reader thread: copy the inputs out, then run the call on the loop."""
        call = message[1]
        try:
            inputs = instance.reader.read(message[4])
        except Exception as exc:
            instance.stub.send(("bls_r", call, ("err", f"BLS inputs unreadable: {exc}", 1), True))
            return
        if self.loop.is_closed():
            instance.stub.send(("bls_r", call, ("err", "the server is shutting down", 4), True))
            return
        asyncio.run_coroutine_threadsafe(self.run(instance, message, inputs), self.loop)

    async def run(self, instance: PythonInstance, message: tuple[Any, ...], inputs: list[Any]) -> None:
        from shipyard.serving_runtime.protocol.types import DecodedInput, DecodedRequest, RequestedOutput
        from shipyard.serving_runtime.protocol.validate import build_request, collect_outputs

        _, call, model_name, version, _, requested, parameters, timeout_us, request_id, decoupled = message
        params: dict[str, object] = json.loads(parameters) if parameters else {}
        if timeout_us:
            params["timeout"] = int(timeout_us)
        decoded = DecodedRequest(
            inputs=[DecodedInput(name, datatype, tuple(array.shape), array) for name, datatype, array in inputs],
            outputs=[RequestedOutput(name) for name in requested],
            id=request_id or None,
            parameters=params,
        )
        version_arg = None if int(version) < 1 else int(version)
        try:
            if decoupled:
                await self._stream(instance, call, model_name, version_arg, decoded)
                return
            model = self.service.model(model_name, version_arg)
            if getattr(model, "decoupled", False):
                raise _Unsupported(
                    f"model '{model_name}' is decoupled: call exec(decoupled=True) and iterate the responses"
                )
            model, built, results = await self.service.execute(
                model_name, version_arg, lambda m: build_request(m, decoded), model
            )
            outputs = collect_outputs(model, built, results)
            payload = self._ok(instance, [(o.name, o.data) for o in outputs], getattr(results, "parameters", None))
        except ServingError as exc:
            payload = ("err", exc.message, code_for_error(exc))
        except Exception as exc:  # never leave the model waiting
            log.exception("BLS call to %r failed", model_name)
            payload = ("err", f"internal error: {type(exc).__name__}: {exc}", 1)
        instance.stub.send(("bls_r", call, payload, True))

    def _ok(
        self, instance: PythonInstance, tensors: list[tuple[str, np.ndarray]], parameters: Any = None
    ) -> tuple[Any, ...]:
        """The answer to the stub: the tensors (in shared memory) and the response's parameters."""
        return ("ok", instance.pool.write(tensors), dict(parameters or {}))

    async def _stream(
        self, instance: PythonInstance, call: int, model_name: str, version: int | None, decoded: Any
    ) -> None:
        """A decoupled BLS call: every response of the target goes back as it comes."""
        from shipyard.serving_runtime.protocol.validate import build_request

        model = self.service.model(model_name, version)

        def respond(outputs: dict[str, np.ndarray] | None, error: Exception | None, final: bool) -> None:
            if error is not None:
                serving = error if isinstance(error, ServingError) else ServingError(str(error))
                payload: Any = ("err", serving.message, code_for_error(serving))
            elif outputs is not None:
                payload = self._ok(instance, list(outputs.items()), getattr(outputs, "parameters", None))
            else:
                payload = None
            instance.stub.send(("bls_r", call, payload, final))

        def build(served: Any) -> Any:
            request = build_request(served, decoded)
            if getattr(served, "decoupled", False):
                request.on_response = respond
            return request

        _, _, results = await self.service.execute(model_name, version, build, model)
        if not getattr(model, "decoupled", False):  # a plain model answers once
            respond(results, None, True)


class _Unsupported(ServingError):
    grpc_code = "UNIMPLEMENTED"
    http_status = 501
