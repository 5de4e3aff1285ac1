"""One instance of a Python model: a stub process, restarted when it dies.

``execute_requests`` is what the scheduler's worker thread calls with the batch it formed: the
requests go to ``TritonPythonModel.execute`` as a list, exactly as Triton hands them, and each
comes back with its own outputs or its own error. A model that raises fails the requests of that
call with its message. A process that crashes, exits or does not answer within
``execute_timeout_s`` (config ``parameters``, default 300) fails the requests in flight with the
reason, and a new process is started (``initialize`` again) at once, in the background; if that
fails, the instance answers with the reason until a later request's restart succeeds.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.serving_runtime.backends.python import batch_codec, loop_call
from shipyard.serving_runtime.backends.python.errors import error_for_code
from shipyard.serving_runtime.backends.python.ipc import ChannelClosed
from shipyard.serving_runtime.backends.python.process import CallTimeout, StubDied, StubProcess
from shipyard.serving_runtime.backends.python.shm import ShmError, SlabPool, SlabReader
from shipyard.serving_runtime.errors import BackendError, ModelLoadError, ServingError
from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher
from shipyard.serving_runtime.scheduling.group import RequestGroup, expand, regroup, run_members

log = logging.getLogger("shipyard.serving_runtime.backends.python")

# Which batches go straight from the event loop to the process (start_requests) instead of through
# the instance's worker thread (execute_requests). "0" (the default since session 16): none, every
# batch through the worker, whose c=1 p50 beat "auto" in three of four quiet A/B runs and which
# gave bigger batches under load. "auto" (the default of sessions 11-15): a lone request at light
# load (a batch of one request and no other request pending in any dynamic batcher of the
# process), saving the worker's two hand-overs; "1": every batch (docs/serving.md, Python models,
# "Two paths").
LOOP_CALL_ENV = "SHIPYARD_PYTHON_LOOP_CALL"
LOOP_CALL_MODES = ("auto", "0", "1")
LOOP_CALL_DEFAULT = "0"
DEFAULT_EXECUTE_TIMEOUT_S = 300.0
DEFAULT_INIT_TIMEOUT_S = 300.0
FINALIZE_TIMEOUT_S = 10.0
RESTART_RETRY_S = 1.0
_KEYS = itertools.count(1)
_INSTANCES = itertools.count(1)

# Called (from any thread) with (outputs or None, error or None, final) for each response of a
# decoupled model's request.
Responder = Callable[[dict[str, np.ndarray] | None, ServingError | None, bool], None]


class ResponseOutputs(dict):  # type: ignore[type-arg]
    """A response's outputs (name -> array) and the ``parameters`` the model set on it
    (``InferenceResponse(parameters=...)``), which the frontends send as the response's parameters."""

    parameters: dict[str, Any] = {}


def response_outputs(tensors: Sequence[tuple[str, str, np.ndarray]], parameters: Any) -> dict[str, np.ndarray]:
    """The outputs of one response: a plain dict, or ``ResponseOutputs`` when it has parameters."""
    outputs = {name: array for name, _, array in tensors}
    if not parameters:
        return outputs
    carried = ResponseOutputs(outputs)
    carried.parameters = dict(parameters)
    return carried


def loop_call_mode() -> str:
    """``SHIPYARD_PYTHON_LOOP_CALL`` (auto, 0 or 1; unset: 0); another value is logged and runs as 0."""
    mode = os.environ.get(LOOP_CALL_ENV, LOOP_CALL_DEFAULT).strip() or LOOP_CALL_DEFAULT
    if mode not in LOOP_CALL_MODES:
        log.warning(
            "%s=%r is not one of %s; using %s", LOOP_CALL_ENV, mode, ", ".join(LOOP_CALL_MODES), LOOP_CALL_DEFAULT
        )
        return LOOP_CALL_DEFAULT
    return mode


def _seconds(parameters: Mapping[str, str], key: str, default: float, source: str) -> float:
    raw = parameters.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ModelLoadError(f"{source}: parameter {key} must be a positive number of seconds, got {raw!r}")
    return value


class PythonInstance:
    """A ``BackendInstance`` that runs ``model.py`` in its own process."""

    inline_safe = False

    def __init__(
        self, model_path: Path, args: dict[str, str], parameters: Mapping[str, str], output_names: Sequence[str]
    ) -> None:
        """Start the process and run ``initialize``.

        Raises: ModelLoadError naming the model file and initialize's error (or the process's end).
        """
        self.model_path = model_path
        self.output_names = list(output_names)
        self.args = args
        self.name = args["model_instance_name"]
        self.model_name = args["model_name"]
        self.model_version = int(args["model_version"])
        self.decoupled = bool(json.loads(args["model_config"]).get("model_transaction_policy", {}).get("decoupled"))
        source = str(model_path)
        self.execute_timeout_s = _seconds(parameters, "execute_timeout_s", DEFAULT_EXECUTE_TIMEOUT_S, source)
        self.init_timeout_s = _seconds(parameters, "initialize_timeout_s", DEFAULT_INIT_TIMEOUT_S, source)
        self.prefix = f"shipyard-py-{os.getpid()}-{next(_INSTANCES)}"
        self.pool = SlabPool(self.prefix + "-s")
        self.reader = SlabReader()
        self.responders: dict[int, Responder] = {}
        self._owner: dict[int, StubProcess] = {}  # which process each open decoupled request is on
        self._running: set[int] = set()  # the requests of the batch in execute (not decoupled)
        self.bls_handler: Callable[[PythonInstance, tuple[Any, ...]], None] | None = None
        self._life = threading.Lock()
        self._closed = False
        self._generation = 0
        self.unavailable: str | None = None
        self._last_try = 0.0
        self.restarts = 0
        # a batch may be sent to the process while the one before it runs (``presend``); not for
        # decoupled models, whose responses stream while they run
        self.prefetchable = not self.decoupled
        mode = loop_call_mode()
        self.loop_calls = mode == "1"  # every batch from the loop
        self.loop_lone = mode == "auto"  # a lone request at light load from the loop
        try:
            self.stub = self._start()
        except BaseException:
            self.pool.close()
            raise

    # -- life ------------------------------------------------------------------------------------

    def _start(self) -> StubProcess:
        self._generation += 1
        prefix = f"{self.prefix}-{self._generation}"
        stub = StubProcess(prefix, self.reader, self._on_message, self._on_exit, self.pool.prefix + "-")
        where = f"{self.model_path}: initialize of instance {self.name!r}"
        try:
            reply = stub.call(("init", str(self.model_path), self.args), self.init_timeout_s)
        except StubDied as exc:
            raise ModelLoadError(f"{where}: {exc}") from None
        except CallTimeout:
            stub.kill()
            raise ModelLoadError(
                f"{where} did not finish within {self.init_timeout_s:g} s (initialize_timeout_s)"
            ) from None
        if reply[0] != "ok":
            stub.stop(FINALIZE_TIMEOUT_S)
            raise ModelLoadError(f"{where} failed: {reply[1]}")
        return stub

    def _ensure_running(self) -> str | None:
        """Restart the process when it is gone; None when it runs, else why it cannot."""
        with self._life:
            if self._closed:
                return f"instance {self.name} is closed"
            if self.stub.alive:
                return None
            now = time.monotonic()
            if self.unavailable is not None and now - self._last_try < RESTART_RETRY_S:
                return self.unavailable
            self._last_try = now
            try:
                self.stub = self._start()
            except ServingError as exc:
                self.unavailable = f"instance {self.name} of model {self.model_name!r} is unavailable: {exc.message}"
                log.error("%s", self.unavailable)
                return self.unavailable
            self.unavailable = None
            self.restarts += 1
            log.warning("Python model instance %s restarted (pid %d)", self.name, self.stub.pid)
            return None

    def _on_exit(self, stub: StubProcess) -> None:
        reason = self._death_message(stub)
        for key in [k for k, owner in list(self._owner.items()) if owner is stub]:
            self._owner.pop(key, None)
            responder = self.responders.pop(key, None)
            if responder is not None:
                responder(None, BackendError(reason), True)
        if not self._closed:
            threading.Thread(target=self._ensure_running, name=f"{self.name}-restart", daemon=True).start()

    def _death_message(self, stub: StubProcess) -> str:
        return (
            f"the Python model process of instance {self.name!r} of model {self.model_name!r} "
            f"failed: {stub.exit_reason()}; it is being restarted"
        )

    # -- messages from the stub (reader thread) --------------------------------------------------

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "resp":
            self._on_response(message[1], message[2], message[3])
        elif kind == "bls":
            if self.bls_handler is None:
                self.stub.send(
                    ("bls_r", message[1], ("err", "BLS is not available: the model is not served yet", 4), True)
                )
            else:
                self.bls_handler(self, message)
        elif kind == "log":
            level = {"WARNING": logging.WARNING, "ERROR": logging.ERROR, "VERBOSE": logging.DEBUG}.get(message[1])
            log.log(level or logging.INFO, "%s: %s", self.name, message[2])

    def _on_response(self, key: int, payload: Any, flags: int) -> None:
        final = bool(flags & 1)
        if final:
            self._owner.pop(key, None)
        responder = self.responders.pop(key, None) if final else self.responders.get(key)
        if responder is None:
            return
        if payload is None:
            responder(None, None, final)
            return
        outputs, error = self.decode(payload)
        responder(outputs, error, final)

    def decode(self, payload: tuple[Any, ...]) -> tuple[dict[str, np.ndarray] | None, ServingError | None]:
        if payload[0] == "ok":
            return response_outputs(self.reader.read(payload[1]), payload[2]), None
        return None, error_for_code(str(payload[1]), int(payload[2]))

    # -- the scheduler's side --------------------------------------------------------------------

    def execute_requests(self, requests: Sequence[Any]) -> list[dict[str, np.ndarray] | ServingError]:
        """Run one formed batch (``scheduling.InferenceRequest`` objects) through ``execute``, on
        the calling thread (the instance's worker; ``start_requests`` is the event loop's way).

        Never raises: each request gets its outputs or a ServingError. A ``RequestGroup`` (the
        native gRPC fast path) runs as its members, one request each for ``execute``.
        """
        if any(isinstance(request, RequestGroup) for request in requests):
            return run_members(self.execute_requests, requests)
        reason = self._ensure_running()
        if reason is not None:
            return [BackendError(reason) for _ in requests]
        stub = self.stub
        keys = [next(_KEYS) for _ in requests]
        try:
            described = self._describe(requests, keys)
        except (ShmError, ServingError, ValueError) as exc:
            return [BackendError(str(exc)) for _ in requests]
        self._register(requests, keys, stub)
        message = ("exec", keys[0], described)
        return self._answered(stub, keys, len(requests), lambda: stub.call(message, self.execute_timeout_s))

    def _answered(
        self, stub: StubProcess, keys: list[int], count: int, read: Callable[[], tuple[Any, ...]]
    ) -> list[Any]:
        """What ``execute_requests`` returns for a batch whose reply ``read()`` waits for on this thread."""
        try:
            reply = read()
        except StubDied:
            return [BackendError(self._death_message(stub)) for _ in range(count)]
        except CallTimeout:
            stub.kill()
            return [BackendError(self._timeout_message()) for _ in range(count)]
        finally:
            self._running.difference_update(keys)
        return self._results(reply, keys, count)

    def presend(self, requests: Sequence[Any]) -> tuple[StubProcess, list[int]] | None:
        """Send a batch to the process while the batch before it runs there (``InstanceWorker.prefetch``,
        from the event loop): the process reads it once it has answered that one. What
        ``finish_presend`` needs, or None when nothing was sent (request groups, a closed instance, a
        process that is gone or restarting, tensors that do not fit): the worker then runs the batch with
        ``execute_requests`` as usual."""
        if self._closed or any(isinstance(request, RequestGroup) for request in requests):
            return None
        stub = self.stub
        if not stub.alive:
            return None
        keys = [next(_KEYS) for _ in requests]
        try:
            described = self._describe(requests, keys)
        except (ShmError, ServingError, ValueError):
            return None
        self._register(requests, keys, stub)
        try:
            stub.send_call(("exec", keys[0], described))
        except ChannelClosed:
            self._running.difference_update(keys)
            return None
        return stub, keys

    def finish_presend(self, requests: Sequence[Any], pending: tuple[StubProcess, list[int]]) -> list[Any]:
        """The results of a batch ``presend`` sent, read on the worker thread after the batch before it.
        When that process ended (or was killed) before it could start the batch, the batch runs again
        with ``execute_requests``, on the restarted process. Never raises."""
        stub, keys = pending
        if stub is not self.stub or not stub.alive:
            self._running.difference_update(keys)
            return self.execute_requests(requests)
        return self._answered(stub, keys, len(requests), lambda: stub.receive(self.execute_timeout_s))

    def start_requests(self, requests: Sequence[Any], done: Callable[[list[Any]], None], waiting: int = 0) -> bool:
        """Send one formed batch from the event loop, which reads the reply when it arrives
        (``loop_call``); ``done`` then gets, on the loop, what ``execute_requests`` would return.
        ``waiting``: requests queued for an instance besides this batch.

        False (nothing was sent): the loop path is not for this batch (``SHIPYARD_PYTHON_LOOP_CALL``:
        by default only a lone request at light load, see ``takes_loop_path``), the process is being
        (re)started, a call is in progress or no event loop runs here; run ``execute_requests`` on
        the worker thread.
        """
        if any(isinstance(request, RequestGroup) for request in requests):
            # auto: groups (an ensemble's steps, the fast path) batch better on the worker, but for a
            # lone group of one request at light load, as for a lone request (``takes_loop_path``)
            if not self.loop_calls and (len(requests) > 1 or len(requests[0].members) > 1):
                return False
            flat, spans = expand(requests)
            return self.start_requests(flat, lambda results: done(regroup(requests, spans, results)), waiting)
        if self._closed or not self.takes_loop_path(len(requests), waiting):
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        stub = self.stub
        if not stub.try_begin():
            return False
        keys = [next(_KEYS) for _ in requests]
        try:
            described = self._describe(requests, keys)
        except (ShmError, ServingError, ValueError) as exc:
            stub.end_call()
            loop.call_soon(done, [BackendError(str(exc)) for _ in requests])
            return True
        self._register(requests, keys, stub)

        def finish(reply: tuple[Any, ...] | None, failure: str | None) -> None:
            self._running.difference_update(keys)
            if reply is not None:
                done(self._results(reply, keys, len(requests)))
                return
            message = self._timeout_message() if failure == loop_call.TIMED_OUT else self._death_message(stub)
            for key in keys:  # a decoupled request's stream ends with the call
                self._owner.pop(key, None)
                responder = self.responders.pop(key, None)
                if responder is not None:
                    responder(None, BackendError(message), True)
            done([BackendError(message) for _ in requests])

        loop_call.start(loop, stub, ("exec", keys[0], described), self.execute_timeout_s, finish)
        return True

    def takes_loop_path(self, size: int, waiting: int) -> bool:
        """Whether a batch of ``size`` requests, with ``waiting`` more queued, goes from the event
        loop: every batch (mode 1), none (mode 0), or (auto) a lone request at light load: one
        request, nothing queued, and no other request pending in any dynamic batcher of the process
        (``start_requests`` leaves request groups of more than one request, an ensemble's steps and
        the native fast path's, to the worker). At c=1 that skips the worker thread's two
        hand-overs; under load the worker path, which gave bigger batches, stays."""
        if self.loop_calls:
            return True
        return self.loop_lone and size == 1 and waiting == 0 and DynamicBatcher.process_pending <= 1

    def _register(self, requests: Sequence[Any], keys: list[int], stub: StubProcess) -> None:
        """Note the batch's requests as running (decoupled: their responders) with their cancel hooks."""
        for key, request in zip(keys, requests, strict=True):
            if self.decoupled:
                responder = getattr(request, "on_response", None)
                if responder is None:
                    continue
                self.responders[key] = responder
                self._owner[key] = stub
            else:
                self._running.add(key)
            # called when the client goes away (a stream closed, a call cancelled): is_cancelled()
            setattr(request, "cancel_hook", functools.partial(self.cancel, key))  # noqa: B010

    def _timeout_message(self) -> str:
        return (
            f"the Python model instance {self.name!r} of model {self.model_name!r} did not finish execute "
            f"within {self.execute_timeout_s:g} s (parameter execute_timeout_s); its process was killed and "
            "is being restarted"
        )

    def _results(self, reply: tuple[Any, ...], keys: list[int], count: int) -> list[Any]:
        if reply[0] == "fail":
            message = f"Failed to process the request(s) for model instance '{self.name}', message: {reply[2]}"
            for key in keys:
                self._owner.pop(key, None)
                responder = self.responders.pop(key, None)
                if responder is not None:
                    responder(None, BackendError(message), True)
            return [BackendError(message) for _ in range(count)]
        if reply[2] is None:  # decoupled: responses go through the responders
            return [{} for _ in range(count)]
        statuses, encoded = reply[2]
        tensors = iter(batch_codec.decode(self.reader, encoded))
        results: list[Any] = []
        for status in statuses:
            if status[0] == "ok":
                results.append(response_outputs(next(tensors), status[1]))
            else:
                results.append(error_for_code(str(status[1]), int(status[2])))
        return results

    def _describe(self, requests: Sequence[Any], keys: list[int]) -> tuple[Any, ...]:
        """The ``exec`` call's body: per request (key, requested outputs, id, parameters), and
        the inputs (``batch_codec``). Raises: ShmError, ValueError."""
        meta = []
        scalar = (str, int, float, bool)
        for key, request in zip(keys, requests, strict=True):
            parameters = {k: v for k, v in request.parameters.items() if isinstance(v, scalar)}
            meta.append((key, list(request.outputs) or self.output_names, request.request_id, parameters))
        return (meta, batch_codec.encode(self.pool, [request.inputs for request in requests]))

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One request (warm-up, or a caller without request lists). Raises: the request's error."""
        from shipyard.serving_runtime.scheduling.api import InferenceRequest

        result = self.execute_requests([InferenceRequest(dict(inputs), outputs)])[0]
        if isinstance(result, ServingError):
            raise result
        return result

    def bind_server(self, manager: Any) -> None:
        """Let the model call the server's models (BLS); call on the server's event loop."""
        import asyncio

        from shipyard.serving_runtime.backends.python.bls import BlsRouter

        self.bls_handler = BlsRouter(manager, asyncio.get_running_loop())

    def cancel(self, key: int) -> None:
        """Mark request ``key`` cancelled for the model (``is_cancelled()``); its responses are dropped.
        Any thread; nothing happens once the request has finished."""
        self._owner.pop(key, None)
        if self.responders.pop(key, None) is not None or key in self._running:
            self.stub.send(("cancel", key))

    def close(self) -> None:
        with self._life:
            self._closed = True
            stub = self.stub
        stub.stop(FINALIZE_TIMEOUT_S)
        self.pool.close()
        self.reader.close()
