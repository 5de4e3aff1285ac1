"""The process that runs one instance of a Python model (Triton's ``triton_python_backend_stub``).

Started by ``instance.PythonInstance`` as ``python -m shipyard.serving_runtime.backends.python.stub
--fd N --prefix P``: ``N`` is its end of the control socket, ``P`` names its shared-memory slabs.
It registers ``pb_utils`` as ``triton_python_backend_utils``, imports ``model.py`` and then serves
the server's calls on ``--fd``: ``init`` (``initialize(args)``), ``exec`` (``execute(requests)``),
``fini`` (``finalize()``) and ``autocomplete``, each answered on the main thread, which runs the
model. On ``--events`` the model's own messages go out (decoupled responses, BLS calls, logs) and a
reader thread takes BLS answers and cancellations, so ``exec()`` can wait while the model runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import os
import queue
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any

from shipyard.serving_runtime.backends.python import batch_codec, pb_utils
from shipyard.serving_runtime.backends.python.ipc import Channel, ChannelClosed
from shipyard.serving_runtime.backends.python.shm import SlabPool, SlabReader, TensorRef, remove_files

MODULE_NAME = "triton_python_backend_utils"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, pb_utils.TritonModelException):
        return exc.message() or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class _BlsStream:
    """Responses of a decoupled BLS call, as an iterator (ends after the final flag)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def __iter__(self) -> _BlsStream:
        return self

    def __next__(self) -> pb_utils.InferenceResponse:
        item = self._queue.get()
        if item is None:
            raise StopIteration
        return item  # type: ignore[no-any-return]


class StubRuntime:
    """``pb_utils._runtime``: the model's way back to the server."""

    def __init__(self, channel: Channel, pool: SlabPool, reader: SlabReader) -> None:
        self.channel = channel
        self.pool = pool
        self.reader = reader
        self.model_config: dict[str, Any] = {}
        self._calls: dict[int, Any] = {}
        self._next_call = 0
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()

    # -- tensors ---------------------------------------------------------------------------------

    def tensors(self, refs: list[TensorRef]) -> list[pb_utils.Tensor]:
        return [pb_utils.Tensor(name, array) for name, _, array in self.reader.read(refs)]

    def response_payload(self, response: Any, wanted: list[str] | None) -> tuple[Any, ...]:
        """What the server needs of a response: ``("ok", refs, params)`` or ``("err", msg, code)``."""
        return self.payloads([(response, wanted)])[0]

    def payloads(self, responses: list[tuple[Any, list[str] | None]]) -> list[tuple[Any, ...]]:
        """``response_payload`` for several responses, their tensors written into one slab."""
        results: list[Any] = []
        tensors: list[tuple[str, Any]] = []
        counts: list[int] = []
        for response, wanted in responses:
            if not isinstance(response, pb_utils.InferenceResponse):
                message = f"expected an InferenceResponse, got {type(response).__name__}"
                results.append(("err", message, pb_utils.TritonError.INTERNAL))
                continue
            error = response.error()
            if error is not None:
                results.append(("err", error.message(), error.code()))
                continue
            chosen = [t for t in response.output_tensors() if wanted is None or t.name() in wanted]
            tensors.extend((t.name(), t.as_numpy()) for t in chosen)
            counts.append(len(chosen))
            results.append(("ok", None, response._parameters or None))
        refs = self.pool.write(tensors)
        start = 0
        for index, result in enumerate(results):
            if result[0] == "ok":
                count = counts.pop(0)
                results[index] = ("ok", refs[start : start + count], result[2])
                start += count
        return results

    def batch_reply(self, responses: list[tuple[Any, list[str] | None]]) -> tuple[Any, ...]:
        """What the server needs of an ``execute``'s responses: per response ``("ok", params)``
        or ``("err", msg, code)``, and the tensors of the ok ones (``batch_codec``)."""
        statuses: list[tuple[Any, ...]] = []
        outputs: list[dict[str, Any]] = []
        for response, wanted in responses:
            if not isinstance(response, pb_utils.InferenceResponse):
                message = f"expected an InferenceResponse, got {type(response).__name__}"
                statuses.append(("err", message, pb_utils.TritonError.INTERNAL))
                continue
            error = response.error()
            if error is not None:
                statuses.append(("err", error.message(), error.code()))
                continue
            outputs.append(
                {t.name(): t.as_numpy() for t in response.output_tensors() if wanted is None or t.name() in wanted}
            )
            statuses.append(("ok", response._parameters or None))
        return (statuses, batch_codec.encode(self.pool, outputs))

    # -- pb_utils._Runtime -----------------------------------------------------------------------

    def send(self, key: int, response: Any, flags: int) -> None:
        payload = None if response is None else self.response_payload(response, None)
        self.channel.send(("resp", key, payload, flags))
        if flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._cancelled.discard(key)

    def cancelled(self, key: int) -> bool:
        return key in self._cancelled

    def log(self, level: str, message: str) -> None:
        self.channel.send(("log", level, message))

    def _call(self, request: pb_utils.InferenceRequest, decoupled: bool, handler: Any) -> None:
        refs = self.pool.write([(t.name(), t.as_numpy()) for t in request.inputs()])
        with self._lock:
            self._next_call += 1
            call = self._next_call
            self._calls[call] = handler
        message = (
            "bls", call, request.model_name(), request.model_version(), refs, request.requested_output_names(),
            request.parameters(), request.timeout(), request.request_id(), decoupled,
        )  # fmt: skip
        self.channel.send(message)

    def bls_async(self, request: pb_utils.InferenceRequest, decoupled: bool) -> Future[Any]:
        future: Future[Any] = Future()
        if decoupled:
            stream = _BlsStream()
            self._call(request, True, stream)
            future.set_result(stream)
        else:
            self._call(request, False, future)
        return future

    def bls(self, request: pb_utils.InferenceRequest, decoupled: bool) -> Any:
        return self.bls_async(request, decoupled).result()

    def on_bls_answer(self, call: int, payload: Any, final: bool) -> None:
        with self._lock:
            handler = self._calls.get(call)
            if final:
                self._calls.pop(call, None)
        if handler is None:
            return
        response = None
        if payload is not None:
            if payload[0] == "ok":
                response = pb_utils.InferenceResponse(self.tensors(payload[1]), parameters=payload[2])
            else:
                response = pb_utils.InferenceResponse([], error=pb_utils.TritonError(payload[1], payload[2]))
        if isinstance(handler, Future):
            handler.set_result(response)
        else:
            if response is not None:
                handler.put(response)
            if final:
                handler.put(None)

    def on_cancel(self, key: int) -> None:
        self._cancelled.add(key)

    def forget_cancelled(self, last_key: int) -> None:
        """A non-decoupled batch ended: its requests (and any older, as keys only grow) are done."""
        if self._cancelled:
            self._cancelled = {key for key in self._cancelled if key > last_key}


class Stub:
    """``channel``: the server's calls, answered on the main thread; ``events``: what the model
    sends on its own (``runtime``) and the server's answers to it (read by a thread)."""

    def __init__(self, channel: Channel, events: Channel, runtime: StubRuntime, files: tuple[str, ...] = ()) -> None:
        """``files``: name prefixes of the shared-memory slabs to remove if the server dies."""
        self.channel = channel
        self.files = files
        self.parent = os.getppid()
        self.events = events
        self.runtime = runtime
        self.model: Any = None
        self.decoupled = False
        self.instance_name = ""
        self.model_name = ""
        self.model_version = -1
        self.loop: asyncio.AbstractEventLoop | None = None

    def read(self) -> None:
        try:
            while True:
                message = self.events.recv()
                kind = message[0]
                if kind == "bls_r":
                    self.runtime.on_bls_answer(message[1], message[2], message[3])
                elif kind == "cancel":
                    self.runtime.on_cancel(message[1])
        except ChannelClosed:
            # The server closed the channel or died: end now, even while the model is running.
            self.remove_orphaned_files()
            os._exit(0)

    def remove_orphaned_files(self) -> None:
        """When the server died (killed: it could not remove its slabs), remove this instance's
        slabs, its own and the server's, from ``/dev/shm``, which would otherwise keep them until
        reboot. The server's exit closes the channel just before this process is handed to a new
        parent, so wait a little for that; a server that merely closed the channel is alive and
        removes them itself. Unlinking leaves existing mappings intact."""
        deadline = time.monotonic() + 1.0
        while os.getppid() == self.parent and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.getppid() != self.parent:
            for prefix in self.files:
                remove_files(prefix)

    def load_class(self, path: str) -> Any:
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        spec = importlib.util.spec_from_file_location("model", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["model"] = module
        spec.loader.exec_module(module)
        cls = getattr(module, "TritonPythonModel", None)
        if cls is None:
            raise ImportError(f"{path} defines no class TritonPythonModel")
        return cls

    def run(self) -> int:
        threading.Thread(target=self.read, name="stub-reader", daemon=True).start()
        while True:
            try:
                message = self.channel.recv()
            except ChannelClosed:
                self.remove_orphaned_files()
                return 0
            kind = message[0]
            try:
                if kind == "init":
                    self.channel.send(self.init(message[1], message[2]))
                elif kind == "exec":
                    self.channel.send(self.execute(message[1], message[2]))
                elif kind == "autocomplete":
                    self.channel.send(self.autocomplete(message[1], message[2]))
                elif kind == "fini":
                    self.finalize()
                    self.channel.send(("fini_ok",))
                    return 0
            except ChannelClosed:
                return 0

    def autocomplete(self, path: str, config_json: str) -> tuple[Any, ...]:
        try:
            cls = self.load_class(path)
            config = pb_utils.ModelConfig(config_json)
            method = getattr(cls, "auto_complete_config", None)
            if method is not None:
                result = method(config)
                config = result if result is not None else config
            return ("ok", json.dumps(config.as_dict()))
        except Exception as exc:
            return ("err", _error_text(exc))

    def init(self, path: str, args: dict[str, str]) -> tuple[Any, ...]:
        try:
            self.runtime.model_config = json.loads(args["model_config"])
            self.decoupled = pb_utils.using_decoupled_model_transaction_policy(self.runtime.model_config)
            self.instance_name = args.get("model_instance_name", "")
            self.model_name = args.get("model_name", "")
            self.model_version = int(args.get("model_version", "-1") or -1)
            self.model = self.load_class(path)()
            initialize = getattr(self.model, "initialize", None)
            if initialize is not None:
                self._call(initialize, args)
            return ("ok",)
        except Exception as exc:
            return ("err", _error_text(exc), traceback.format_exc(limit=-3))

    def _call(self, function: Any, *args: Any) -> Any:
        result = function(*args)
        if inspect.isawaitable(result):
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result

    def execute(self, batch: int, call: tuple[Any, ...]) -> tuple[Any, ...]:
        """``call``: ``instance.PythonInstance._describe``'s (per-request meta, encoded inputs)."""
        try:
            meta, encoded = call
            inputs = batch_codec.decode(self.runtime.reader, encoded)
            name, version = self.model_name, self.model_version
            incoming = [
                pb_utils.InferenceRequest._incoming(
                    key, self.decoupled, model_name=name, model_version=version,
                    inputs=[pb_utils.Tensor(tensor, array) for tensor, _, array in tensors],
                    requested_output_names=requested, request_id=request_id, parameters=parameters,
                )
                for (key, requested, request_id, parameters), tensors in zip(meta, inputs, strict=True)
            ]  # fmt: skip
            responses = self._call(self.model.execute, incoming)
            if self.decoupled:
                if responses is not None:
                    raise pb_utils.TritonModelException(
                        f"Python model '{self.instance_name}' is using the decoupled mode and the execute function "
                        "must return None."
                    )
                return ("done", batch, None)
            if not isinstance(responses, list) or len(responses) != len(incoming):
                got = len(responses) if isinstance(responses, list) else type(responses).__name__
                raise pb_utils.TritonModelException(
                    "Number of InferenceResponse objects do not match the number of InferenceRequest objects. "
                    f"InferenceRequest(s) size is {len(incoming)}, and InferenceResponse(s) size is {got}"
                )
            wanted = [request.requested_output_names() for request in incoming]
            return ("done", batch, self.runtime.batch_reply(list(zip(responses, wanted, strict=True))))
        except Exception as exc:
            return ("fail", batch, _error_text(exc))
        finally:
            if not self.decoupled and call[0]:
                self.runtime.forget_cancelled(max(entry[0] for entry in call[0]))

    def finalize(self) -> None:
        finalize = getattr(self.model, "finalize", None)
        if finalize is not None:
            try:
                self._call(finalize)
            except Exception:
                traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--server-files", default="", help="name prefix of the server's slabs for this instance")
    options = parser.parse_args(argv)
    channel = Channel(socket.socket(fileno=options.fd))
    events = Channel(socket.socket(fileno=options.events))
    pool = SlabPool(options.prefix)
    reader = SlabReader()
    runtime = StubRuntime(events, pool, reader)
    pb_utils._runtime = runtime
    sys.modules[MODULE_NAME] = pb_utils
    try:
        files = (options.prefix + "-", *([options.server_files] if options.server_files else []))
        return Stub(channel, events, runtime, files).run()
    finally:
        pool.close()
        reader.close()


if __name__ == "__main__":
    sys.exit(main())
