"""The sequence batcher (``sequence_batching`` in config.pbtxt), as Triton's: each sequence of
requests (one correlation id, from ``sequence_start`` to ``sequence_end``) holds a slot pinned to
one instance, its requests execute one at a time in arrival order, and requests of different
sequences on the same instance execute together (one row each, up to ``max_batch_size``).

- **Slots**: ``direct``: ``max(max_batch_size, 1)`` per instance; ``oldest``:
  ``max_candidate_sequences`` (spread over the instances). A sequence that finds no free slot waits
  in the backlog (its requests queue there) and takes the first slot freed, as in Triton.
- **Controls** (``sequence_config.control_tensors``): START/END as the request says, READY true,
  CORRID the id; **implicit state**: the state input is the previous step's state output (the
  ``initial_state`` at START), kept here between requests and dropped when the sequence ends.
- **Idle**: a sequence without requests for ``max_sequence_idle_microseconds`` loses its slot and
  its state; its next request without START is refused, as an ended sequence's is.
- **Errors** (Triton's words, 400 / INVALID_ARGUMENT): no or zero correlation id, a batch above 1,
  a request for an unknown, ended or released sequence without START.

Everything but the backend call runs on the event loop thread, so there is no lock; each instance
executes on its own single worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.errors import BackendError, InvalidArgument, ModelNotReady, ServingError
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.scheduling.sequence_config import (
    SequenceId,
    SequenceSettings,
    control_tensors,
    sequence_parameters,
)
from shipyard.serving_runtime.stats import ModelStats

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Item:
    request: InferenceRequest
    future: asyncio.Future[dict[str, np.ndarray]]
    start: bool
    end: bool
    enqueue_ns: int


@dataclass(eq=False)
class _Sequence:
    id: SequenceId
    queue: deque[_Item] = field(default_factory=deque)
    instance: int | None = None  # None: waiting in the backlog
    busy: bool = False
    state: dict[str, np.ndarray] = field(default_factory=dict)
    last_ns: int = 0


class SequenceBatcher:
    """The ``Scheduler`` for models with ``sequence_batching`` (see the module docstring)."""

    def __init__(
        self, instances: Sequence[BackendInstance], model_name: str, version: int, settings: SequenceSettings
    ) -> None:
        if not instances:
            raise ValueError("a sequence batcher needs at least one instance")
        self.stats = ModelStats(model_name, version)
        self._model = model_name
        self._instances = list(instances)
        self._settings = settings
        self._threads = [ThreadPoolExecutor(1, f"{model_name}-v{version}-seq{i}") for i in range(len(instances))]
        self._free: deque[int] = deque(i % len(instances) for i in range(settings.slots))
        self._active: dict[SequenceId, _Sequence] = {}  # ids that accept requests without START
        self._backlog: deque[_Sequence] = deque()
        self._runnable: list[deque[_Sequence]] = [deque() for _ in instances]
        self._running = [False] * len(instances)
        self._timers: list[asyncio.TimerHandle | None] = [None] * len(instances)  # oldest's queue delay
        self._holders: set[_Sequence] = set()  # sequences holding a slot (hashed by identity)
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._reaper: asyncio.Task[None] | None = None

    # -- the Scheduler interface --------------------------------------------------------------

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Queue ``request`` on its sequence (synchronously, so arrival order is execution order).

        Raises: InvalidArgument (Triton's sequence errors), ModelNotReady (draining), BackendError.
        """
        if self._draining:
            raise ModelNotReady(f"model '{self._model}' is being unloaded")
        sequence_id, start, end = sequence_parameters(request.parameters, self._model)
        if request.batch_size > 1:
            raise InvalidArgument(
                f"inference request to model '{self._model}' must specify batch-size 1 due to requirements "
                "of sequence batcher"
            )
        sequence = self._active.get(sequence_id)
        if sequence is None and not start:
            raise InvalidArgument(
                f"inference request for sequence {sequence_id} to model '{self._model}' must specify the START "
                "flag on the first request of the sequence"
            )
        if sequence is not None and start:
            log.warning(
                "sequence %s for model '%s' has a conflict. The previous sequence did not end before this sequence "
                "start. Previous sequence will be terminated early.",
                sequence_id,
                self._model,
            )
        loop = asyncio.get_running_loop()
        if sequence is None:
            sequence = self._active[sequence_id] = _Sequence(sequence_id)
            self._assign(sequence)
        if end:
            del self._active[sequence_id]
        item = _Item(request, loop.create_future(), start, end, time.monotonic_ns())
        sequence.queue.append(item)
        sequence.last_ns = item.enqueue_ns
        self._pending += 1
        self._idle.clear()
        self._wake(sequence)
        if self._reaper is None:
            self._reaper = loop.create_task(self._reap(), name=f"{self._model}-sequence-reaper")
        return await item.future

    def pending_count(self) -> int:
        return self._pending

    async def drain(self) -> None:
        self._draining = True
        await self._idle.wait()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for timer in self._timers:
            if timer is not None:
                timer.cancel()
        for thread in self._threads:
            thread.shutdown(wait=True)
        for instance in self._instances:
            try:
                instance.close()
            except Exception:  # pragma: no cover - best effort
                log.exception("closing an instance of %s failed", self._model)

    # -- slots ----------------------------------------------------------------------------------

    def _assign(self, sequence: _Sequence) -> None:
        if self._free:
            sequence.instance = self._free.popleft()
            self._holders.add(sequence)
        else:
            self._backlog.append(sequence)

    def _release(self, sequence: _Sequence) -> None:
        """Free ``sequence``'s slot (it ended or went idle) for the backlog's first sequence."""
        if sequence.instance is None or sequence not in self._holders:
            return
        self._holders.discard(sequence)
        sequence.state.clear()
        instance, sequence.instance = sequence.instance, None
        if self._backlog:
            waiting = self._backlog.popleft()
            waiting.instance = instance
            self._holders.add(waiting)
            self._wake(waiting)
        else:
            self._free.append(instance)

    async def _reap(self) -> None:
        """Release the slots of sequences idle past ``max_sequence_idle_microseconds``."""
        limit_ns = self._settings.max_idle_us * 1000
        while True:
            now = time.monotonic_ns()
            wait_ns = limit_ns
            for sequence_id, sequence in list(self._active.items()):
                if sequence.busy or sequence.queue or sequence.instance is None:
                    continue
                remaining = sequence.last_ns + limit_ns - now
                if remaining > 0:
                    wait_ns = min(wait_ns, remaining)
                    continue
                log.info("sequence %s of model '%s' idle past the limit: released", sequence_id, self._model)
                del self._active[sequence_id]
                self._release(sequence)
            await asyncio.sleep(wait_ns / 1e9 + 0.001)

    # -- execution ------------------------------------------------------------------------------

    def _wake(self, sequence: _Sequence) -> None:
        if sequence.instance is None or sequence.busy or not sequence.queue:
            return
        runnable = self._runnable[sequence.instance]
        if sequence not in runnable:
            runnable.append(sequence)
        self._kick(sequence.instance)

    def _kick(self, instance: int) -> None:
        runnable = self._runnable[instance]
        if self._running[instance] or not runnable or self._delaying(instance):
            return
        first = runnable.popleft()
        batch = [first]
        signature = self._signature(first)
        skipped: list[_Sequence] = []
        while runnable and len(batch) < self._settings.max_batch:
            candidate = runnable.popleft()
            (batch if self._signature(candidate) == signature else skipped).append(candidate)
        runnable.extendleft(reversed(skipped))
        for sequence in batch:
            sequence.busy = True
        self._running[instance] = True
        asyncio.get_running_loop().create_task(self._execute(instance, batch))

    def _delaying(self, instance: int) -> bool:
        """``oldest`` with ``max_queue_delay_microseconds``: while fewer sequences are ready than a
        full batch, wait until the oldest ready request has waited that long (a timer kicks again)."""
        delay_ns = self._settings.max_queue_delay_us * 1000
        runnable = self._runnable[instance]
        if not delay_ns or len(runnable) >= self._settings.max_batch:
            return False
        remaining = min(s.queue[0].enqueue_ns for s in runnable) + delay_ns - time.monotonic_ns()
        if remaining <= 0:
            return False
        if self._timers[instance] is None:

            def fire() -> None:
                self._timers[instance] = None
                self._kick(instance)

            self._timers[instance] = asyncio.get_running_loop().call_later(remaining / 1e9, fire)
        return True

    def _signature(self, sequence: _Sequence) -> tuple[object, ...]:
        """What rows must share to execute together: input dtypes and item shapes, state shapes."""
        item = sequence.queue[0]
        skip = 1 if self._settings.batched else 0
        inputs = tuple((n, a.dtype.str, a.shape[skip:]) for n, a in sorted(item.request.inputs.items()))
        states = tuple((name, array.shape[skip:]) for name, array in sorted(sequence.state.items()) if not item.start)
        return inputs, states, item.start

    def _feed(self, batch: list[_Sequence], controls_only: bool = False) -> dict[str, np.ndarray]:
        """The batch's inputs: the requests' (unless ``controls_only``), states and controls."""
        settings = self._settings
        items = [s.queue[0] for s in batch]
        feed: dict[str, np.ndarray] = {}
        for name in () if controls_only else items[0].request.inputs:
            arrays = [item.request.inputs[name] for item in items]
            feed[name] = np.concatenate(arrays) if settings.batched and len(arrays) > 1 else arrays[0]
        for state in settings.states:
            rows = []
            for sequence, item in zip(batch, items, strict=True):
                current = sequence.state.get(state.input_name)
                if item.start or current is None:
                    current = state.initial[np.newaxis] if settings.batched else state.initial
                rows.append(current)
            feed[state.input_name] = np.concatenate(rows) if len(rows) > 1 else rows[0]
        feed.update(
            control_tensors(settings, [(s.id, item.start, item.end) for s, item in zip(batch, items, strict=True)])
        )
        return feed

    async def _execute(self, instance: int, batch: list[_Sequence]) -> None:
        items = [s.queue[0] for s in batch]
        start_ns = time.monotonic_ns()
        rows = await self._run(instance, batch)
        end_ns = time.monotonic_ns()
        self.stats.record_execution(len(batch), end_ns - start_ns)
        for sequence, item, outcome in zip(batch, items, rows, strict=True):
            sequence.queue.popleft()
            sequence.busy = False
            if isinstance(outcome, ServingError):
                self.stats.record_failure(outcome.reason, end_ns - item.enqueue_ns)
                if not item.future.done():
                    item.future.set_exception(outcome)
            else:
                for state in self._settings.states:
                    if state.output_name in outcome:
                        sequence.state[state.input_name] = np.array(outcome[state.output_name], copy=True)
                self.stats.record_success(1, end_ns - item.enqueue_ns, start_ns - item.enqueue_ns, end_ns - start_ns)
                if not item.future.done():
                    item.future.set_result(outcome)
            self._pending -= 1
            if item.end:
                self._release(sequence)
            else:
                sequence.last_ns = end_ns
                self._wake(sequence)
        self._running[instance] = False
        self._kick(instance)
        if self._pending == 0:
            self._idle.set()

    async def _run(self, instance: int, batch: list[_Sequence]) -> list[dict[str, np.ndarray] | ServingError]:
        """Each row's outputs or error. Backends that take a list of requests (the Python backend)
        get one request per sequence, as Triton hands them; the others one merged batch."""
        loop = asyncio.get_running_loop()
        backend = self._instances[instance]
        by_request = getattr(backend, "execute_requests", None)
        try:
            if by_request is not None:
                requests = [self._request(sequence) for sequence in batch]
                answers = await loop.run_in_executor(self._threads[instance], by_request, requests)
                return list(answers)
            feed = self._feed(batch)
            results = await loop.run_in_executor(self._threads[instance], backend.execute, feed, ())
        except ServingError as exc:
            return [exc] * len(batch)
        except Exception as exc:
            error = BackendError(f"model '{self._model}' failed to execute the batch: {type(exc).__name__}: {exc}")
            return [error] * len(batch)
        return [
            {name: self._row(array, row, len(batch)) for name, array in results.items()} for row in range(len(batch))
        ]

    def _request(self, sequence: _Sequence) -> InferenceRequest:
        """One sequence's head request with its controls and state, asking for its state outputs too."""
        item = sequence.queue[0]
        inputs = {**item.request.inputs, **self._feed([sequence], controls_only=True)}
        wanted = item.request.outputs or self._settings.outputs
        outputs = (*wanted, *(s.output_name for s in self._settings.states if s.output_name not in wanted))
        request = item.request
        return InferenceRequest(inputs, outputs, 1, request.priority, request.timeout_us, request.request_id,
                                request.parameters)  # fmt: skip

    def _row(self, array: np.ndarray, row: int, rows: int) -> np.ndarray:
        if not self._settings.batched or (rows == 1 and array.shape[:1] == (1,)):
            return array
        return array[row : row + 1]
