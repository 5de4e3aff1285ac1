"""The contract between the protocol layer and a model's scheduler.

The protocol layer validates a request (names, datatypes, shapes, ``max_batch_size``) and turns
it into an ``InferenceRequest`` of numpy arrays; the scheduler queues it, runs it on one of the
model's instances (alone or merged into a batch) off the event loop, and returns that request's
own outputs.

``Scheduler.submit`` is the one way a request enters a model: the dynamic batcher
(``dynamic.py``) and the ensemble scheduler (``ensemble.py``) implement it. Below it, a formed
batch is handed to an instance's worker thread with ``InstanceWorker.hand_off`` (``instances.py``).
``factory.create_scheduler`` picks the scheduler a config asks for; an ensemble brings its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from shipyard.serving_runtime.stats import ModelStats


@dataclass
class InferenceRequest:
    """A validated request for one model version.

    ``inputs`` carry the batch as their first dimension when the model batches
    (``max_batch_size > 0``); ``batch_size`` is then that dimension (1 for a single item).
    ``outputs`` names the requested outputs; empty means all. ``priority`` 0 means the model's
    default level; ``timeout_us`` 0 means the queue policy's default.
    """

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] = ()
    batch_size: int = 1
    priority: int = 0
    timeout_us: int = 0
    request_id: str = ""
    parameters: dict[str, object] = field(default_factory=dict)
    # Decoupled models only: called from any thread with (outputs or None, error or None, final)
    # for each response; the request's own future then resolves with {} when execute returns.
    on_response: Callable[[dict[str, np.ndarray] | None, Exception | None, bool], None] | None = None
    # A group of client requests merged before the scheduler (the native gRPC fast path): their
    # arrival times (monotonic ns); statistics count each of them as a request.
    group_arrivals_ns: Sequence[int] | None = None
    # Answer without the event loop (the native gRPC fast path, ``instances.answer_early``): called
    # on the instance's thread with this request's outputs once its batch has run; returns what
    # sends the answer (called once the loop has been handed the batch's completion), or None.
    answer_early: Callable[[dict[str, np.ndarray]], Callable[[], None] | None] | None = None
    # Set by the dynamic batcher once a group is queued: ``leave(position, start, stop)`` takes the
    # request at ``position`` of the group (rows ``start:stop``) out, its client having gone away;
    # False when the group is no longer queued (``DynamicBatcher._leave``, ``protocol/fast_leave``).
    leave: Callable[[int, int, int], bool] | None = None
    # The only request in progress in the process (an ensemble's step at c=1, ``ensemble_group._alone``;
    # the native gRPC fast path's only call, ``native_fast.FastPath.run``): with nothing else pending, a model
    # that runs inline may run it on the event loop (``DynamicBatcher._runs_lone_inline``).
    lone: bool = False


class Scheduler(Protocol):
    """Runs requests for one model version on its instances."""

    stats: ModelStats

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Queue ``request`` and return its outputs.

        Raises: QueueFull (queue at max_queue_size), RequestTimeout (waited past its timeout),
        RequestCancelled (the awaiting task was cancelled), BackendError (the batch failed),
        ModelNotReady (the scheduler is draining or closed).
        """
        ...

    def pending_count(self) -> int:
        """Requests accepted but not yet finished (queued or executing)."""
        ...

    async def drain(self) -> None:
        """Stop accepting new requests and wait until every accepted one has finished."""
        ...

    def close(self) -> None:
        """Stop the worker threads and close the instances. Call after ``drain``."""
        ...
