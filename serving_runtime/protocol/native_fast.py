"""The native fast path for ModelInfer: per-request work in C++, Python once per group of requests.

The C++ side (``native/fast_infer.h``) parses and checks plain, valid ModelInfer requests for the
models registered here, groups them (same model, same item shapes, at most ``max_batch_size``
items), concatenates their tensors and, once a group has run, splits the outputs and serializes a
response per request. Python runs each group as ONE request of the model's dynamic batcher.

One definition of the protocol: C++ takes only what ``grpc_codec.fast_request`` would take (no
parameters, no shared memory, raw contents of the model's fixed-size inputs, known outputs);
every other request (errors included) reaches the Python path unchanged, and so do a group's
requests when its model was unloaded or replaced (``fallback``): statuses and messages are the
Python path's.

Registration is lazy and checked per group: a model version is registered the first time a
ModelInfer for it succeeds on the Python path (``observe``), if it is eligible (``ineligible``);
before each group runs, the manager is asked again which model serves that name and version,
and a different answer unregisters it and sends the group to the Python path. So a request never
runs on a version that is unloaded, and a reload needs no hook in the manager.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from shipyard.serving_runtime.datatypes import numpy_to_triton
from shipyard.serving_runtime.errors import BackendError, ModelNotReady, QueueFull, ServingError
from shipyard.serving_runtime.protocol import native_fast_python
from shipyard.serving_runtime.protocol.eager import start_eagerly
from shipyard.serving_runtime.protocol.fast_leave import Leaving
from shipyard.serving_runtime.protocol.service import InferenceService
from shipyard.serving_runtime.protocol.types import ModelLike
from shipyard.serving_runtime.protocol.validate import rules_for
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.traffic import canary_of

log = logging.getLogger(__name__)

_INTERNAL = int(grpc.StatusCode.INTERNAL.value[0])
# "0": the only call in progress never runs on the event loop (``FastPath.run``; an A/B switch).
LONE_ENV = "SHIPYARD_FAST_LONE_INLINE"


def ineligible(model: ModelLike, version: str = "") -> str | None:
    """None when ``model`` can take the fast path for requests naming ``version`` ("" = none), else
    why not.

    Eligible: a model served by the dynamic batcher itself (no sequence batching, response cache,
    decoupled transaction policy), or an ensemble's scheduler, with ``max_batch_size`` >= 1 (a Python
    model's groups reach its ``execute`` request by request, an ensemble runs each request on its
    own: ``native_fast_python``),
    with ``dynamic_batching`` (groups of any number of requests) or without (the default
    scheduler: groups of one request, so each still runs alone), and fixed-size datatypes on every
    input and output. Priority levels and queue policies are fine (``_queueing_reason``): a group
    holds only requests without a ``priority`` parameter, so it is one entry of the queue at the
    default level, counting its requests against that level's ``max_queue_size`` (a group that
    does not fit goes to the Python path). A canary split routes each unversioned request on its
    own draw, so it rules out requests that name no version (``version`` ""); those naming one are
    never rerouted.
    """
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    scheduler = getattr(model, "scheduler", None)
    if type(scheduler) is not DynamicBatcher and not native_fast_python.ensemble_ok(scheduler):
        return f"its scheduler is {type(scheduler).__name__}, not the dynamic batcher"
    config: Any = getattr(model, "config", None)
    if config is None:
        return "it has no config"
    if int(model.max_batch_size) < 1:
        return "max_batch_size is 0"
    if getattr(model, "decoupled", False):
        return "decoupled models see each request"
    if getattr(model, "backend", "") == "python" and not native_fast_python.python_models_on():
        return "Python models take the Python path (SHIPYARD_PYTHON_FAST_PATH=1 puts them on the fast path)"
    if native_fast_python.per_request(model) and not native_fast_python.supported():
        return "Python models see each request, and the native module predates answer_each (rebuild it)"
    reason = _queueing_reason(config)
    if reason is not None:
        return reason
    if not version and canary_of(config) is not None:
        return "it splits unversioned traffic between versions"
    rules = rules_for(model)
    if set(rules.fast_inputs) != set(rules.inputs):
        return "an input is not of a fixed-size datatype"
    if any(rule.datatype == "BYTES" for rule in rules.outputs.values()):
        return "an output is BYTES"
    return None


def _queueing_reason(config: Any) -> str | None:
    """Why a group cannot be one entry of this model's queue, or None.

    A group enters the queue at the default priority level (its requests carry no ``priority``)
    all at once: a queue-policy timeout of that level runs from then for each of its requests, as
    the Python path's runs from when its request enters the queue, so the group times out (REJECT:
    each request fails with the Python path's status and message; DELAY: it moves behind the rest)
    as its requests would; ``allow_timeout_override`` needs a ``timeout`` parameter, which only the
    Python path takes. Other levels' policies apply to Python-path requests only. Ruled out: a
    default level that is the background level (``scheduling/background.py``), whose requests are
    cut into slices and share batches row by row, which a group's statistics do not follow.
    """
    from shipyard.serving_runtime.errors import ModelConfigError
    from shipyard.serving_runtime.scheduling.background import background_from_config

    batching = config.dynamic_batching
    levels = int(batching.priority_levels)
    if levels >= 2 and int(batching.default_priority_level) == levels:
        try:
            background = background_from_config(config, levels, "")
        except ModelConfigError:
            background = None  # not loadable as such; the scheduler has it right
        if background is not None:
            return "its default priority level is the background level"
    return None


@dataclass
class _Entry:
    """A registered (model name, requested version) and the served model it maps to."""

    name: str
    version: str
    model: weakref.ReferenceType[Any]
    outputs: tuple[str, ...]  # config order
    per_request: bool = False  # native_fast_python.per_request(model), fixed per model: once, not per group
    per_member: bool = False  # native_fast_python.per_member(model)


class FastPath:
    """Registers models with the native frontend and runs the groups it hands over."""

    def __init__(self, native: Any, service: InferenceService) -> None:
        self._native = native
        self._service = service
        self._entries: dict[int, _Entry] = {}  # handle -> entry
        self._keys: dict[tuple[str, str], int] = {}
        self._refused: dict[tuple[str, str], weakref.ReferenceType[Any]] = {}  # ineligible, last seen
        self._next_handle = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._members = native_fast_python.Members()  # Python models' requests in progress
        self._groups: set[Leaving] = set()  # the groups in progress (fast_leave.py)
        self._lone_inline = os.environ.get(LONE_ENV, "1") != "0"

    # -- registration ----------------------------------------------------------------------------

    def observe(self, name: str, version: str) -> None:
        """A ModelInfer for (``name``, ``version``) succeeded on the Python path: register it when
        its model can take the fast path. Never raises."""
        key = (name, version)
        if key in self._keys:
            return
        try:
            model = self._service.model(name, version)
        except ServingError:
            return
        refused = self._refused.get(key)
        if refused is not None and refused() is model:
            return
        reason = ineligible(model, version)
        if reason is not None:
            log.debug("model %r: gRPC requests take the Python path: %s", name, reason)
            try:
                self._refused[key] = weakref.ref(model)
            except TypeError:
                pass
            return
        self._register(key, model)

    def _register(self, key: tuple[str, str], model: ModelLike) -> None:
        rules = rules_for(model)
        inputs = [
            (spec.name, spec.datatype, rules.fast_inputs[spec.name].dtype.str, list(spec.dims),
             rules.fast_inputs[spec.name].dtype.itemsize, rules.inputs[spec.name].optional)
            for spec in model.inputs
        ]  # fmt: skip
        handle = self._next_handle
        self._next_handle += 1
        self._entries[handle] = _Entry(
            key[0], key[1], weakref.ref(model), tuple(rules.outputs),
            native_fast_python.per_request(model), native_fast_python.per_member(model),
        )  # fmt: skip
        self._keys[key] = handle
        mbs = int(model.max_batch_size)
        max_requests = 0 if model.config.HasField("dynamic_batching") else 1  # the default scheduler: alone
        if native_fast_python.per_member(model):  # each request runs on its own anyway
            max_requests = 0
        self._native.register_model(
            key[0], key[1], handle, model.name, str(model.version), mbs, max_requests, inputs, list(rules.outputs)
        )
        log.info("model %r version %s: gRPC ModelInfer takes the native fast path", key[0], key[1] or "(default)")

    def _unregister(self, handle: int) -> None:
        entry = self._entries.pop(handle, None)
        if entry is not None and self._keys.get((entry.name, entry.version)) == handle:
            del self._keys[(entry.name, entry.version)]
            self._native.unregister_model(entry.name, entry.version)

    def _served(self, handle: int) -> tuple[_Entry, ModelLike] | None:
        """The entry and its model when that model still serves its name and version, else None
        (and the registration is dropped)."""
        entry = self._entries.get(handle)
        model = entry.model() if entry is not None else None
        if entry is not None and model is not None:
            try:
                if self._service.model(entry.name, entry.version) is model:
                    return entry, model
            except ServingError:
                pass
        self._unregister(handle)
        return None

    # -- groups ----------------------------------------------------------------------------------

    def run(self, batches: list[Any]) -> None:
        """Start each group the native frontend handed over (on the event loop): at once, up to its
        first wait, so that it reaches its batcher on this turn of the loop (``eager.py``).

        A group of one request while that is the only call in progress (c=1) is ``lone``: a model that
        runs inline may compute it on the loop (``DynamicBatcher._runs_lone_inline``) instead of handing
        it to its instance's thread and back (docs/serving.md, "The only call at c=1")."""
        loop = asyncio.get_running_loop()
        lone = self._lone_inline and len(batches) == 1 and batches[0].count == 1 and self._native.inflight == 1
        for batch in batches:
            try:
                task = start_eagerly(loop, self._run(batch, lone))
            except Exception:  # _run answers its own errors; never expected
                log.exception("starting a fast-path group failed")
                continue
            if task is not None:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: Any, lone: bool = False) -> None:
        served = self._served(batch.handle)
        if served is None:
            batch.fallback()
            return
        entry, model = served
        group = native_fast_python.group_request(batch) if entry.per_request else None
        if group is not None:
            self._members.add(batch, group)
        request = group or InferenceRequest(
            inputs=batch.inputs(),
            outputs=batch.outputs,
            batch_size=batch.items,
            group_arrivals_ns=batch.arrivals,
            lone=lone,
        )
        leaving = Leaving(request, batch, _batch_rows)
        self._groups.add(leaving)
        answer = _EarlyAnswer(entry, model, batch, leaving)
        if group is None:
            request.answer_early = answer.prepare
        try:
            if group is not None and entry.per_member:
                results = await native_fast_python.infer_each(model, group, batch, self._members)
                if results is None:  # the model is being replaced: the Python path retries
                    batch.fallback()
                    return
            else:
                results = await model.infer(request)
            if group is not None and native_fast_python.answered_each(batch, model, group, results, leaving.gone):
                return
            if answer.claim():
                return  # the instance's thread has answered (or is answering) it
            if leaving.gone is not None:
                results = leaving.expand(results, batch.items)
            outputs = _outputs(entry, model, batch, results)
        except (ModelNotReady, QueueFull):
            # unloading: the Python path retries on the new version or answers; a full queue: each
            # request is queued or refused on its own there, as max_queue_size counts requests
            batch.fallback()
        except ServingError as exc:
            batch.fail(int(grpc.StatusCode[exc.grpc_code].value[0]), exc.message)
        except asyncio.CancelledError:
            if not answer.claim():
                batch.fail(int(grpc.StatusCode.CANCELLED.value[0]), "the server is shutting down")
            raise
        except Exception as exc:
            log.exception("unexpected error in a gRPC call")
            batch.fail(_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        else:
            batch.complete(outputs)
        finally:
            self._groups.discard(leaving)
            # request -> answer.prepare -> answer -> leaving -> request is a reference cycle: broken
            # here, the group (and its FastBatch's buffers) is freed now by reference counting, not by
            # the cyclic collector (which, with one such cycle per group, ran every ~550 groups on the
            # loop, 1.6 ms each, at c=64 on add_sub). The instance's thread is done with it by now, or
            # (cancelled) finds None and leaves the answer to this path, which has claimed it.
            request.answer_early = None
            if group is not None:
                self._members.remove(batch)

    def cancel_call(self, call_id: int) -> None:
        """The client cancelled a call C++ took (and has answered): it leaves its group while that is
        queued (``fast_leave``), else a Python model's ``is_cancelled()`` turns true."""
        for leaving in self._groups:
            call_ids = leaving.owner.call_ids
            if call_id in call_ids:
                if leaving.leave(call_ids.index(call_id)):
                    return
                break
        self._members.cancel(call_id)

    def cancel(self) -> None:
        """Stop the groups in progress (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()


def _batch_rows(batch: Any) -> Sequence[int]:
    return batch.rows  # type: ignore[no-any-return]


class _EarlyAnswer:
    """Answers a group from the instance's thread as soon as its batch has run (``answer_early``
    of ``scheduling/api.py``): the client does not wait for the event loop to wake, take the
    batch's completion and resume ``_run``. Exactly one side answers: ``prepare`` (the instance's
    thread) or ``_run`` on the loop, whichever claims the group first; ``_run`` claims it before it
    answers or fails it."""

    __slots__ = ("_batch", "_claimed", "_entry", "_leaving", "_lock", "_model")

    def __init__(self, entry: _Entry, model: ModelLike, batch: Any, leaving: Leaving) -> None:
        self._entry, self._model, self._batch, self._leaving = entry, model, batch, leaving
        self._lock = threading.Lock()
        self._claimed = False

    def claim(self) -> bool:
        """On the loop: True when the instance's thread has claimed the group, else claims it for
        the loop (so ``prepare`` will not answer it)."""
        with self._lock:
            taken, self._claimed = self._claimed, True
        return taken

    def prepare(self, results: Mapping[str, np.ndarray]) -> Any:
        """On the instance's thread: what sends the group's answers, or None (outputs the loop's
        path would refuse, or the loop answered first)."""
        try:
            if self._leaving.gone is not None:  # set before the group left the queue
                results = self._leaving.expand(results, self._batch.items)
            outputs = _outputs(self._entry, self._model, self._batch, results)
        except ServingError:
            return None  # _run raises the same error and fails the group
        with self._lock:
            if self._claimed:
                return None
            self._claimed = True
        batch = self._batch

        def send() -> None:
            try:
                try:
                    batch.complete(outputs, now=True)  # grpc writes it on this thread
                except TypeError:  # a module built before ``now``: the writer thread sends it
                    batch.complete(outputs)
            except Exception as exc:  # never expected: outputs were checked above
                log.exception("answering a fast-path group failed")
                batch.fail(_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

        return send


def _outputs(entry: _Entry, model: ModelLike, batch: Any, results: Mapping[str, np.ndarray]) -> list[Any]:
    """(name, datatype, contiguous array) per output, in the order a request naming none gets them
    (validate.collect_outputs). Raises: BackendError as the Python path would."""
    for name in batch.outputs:
        if name not in results:
            raise BackendError(f"model {model.name!r} returned no output {name!r}")
    names = [name for name in entry.outputs if name in results] or list(results)
    outputs = []
    for name in names:
        array = np.ascontiguousarray(results[name])
        datatype = numpy_to_triton(array.dtype)
        if datatype == "BYTES":
            raise BackendError(f"model {model.name!r} returned BYTES for output {name!r}, not in its config")
        if batch.count > 1 and (array.ndim == 0 or array.shape[0] != batch.items):
            raise BackendError(
                f"output {name!r} has shape {list(array.shape)} but the batch has {batch.items} items; "
                "a batched model must return the batch as the first dimension of every output"
            )
        outputs.append((name, datatype, array))
    return outputs
