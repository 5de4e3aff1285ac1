"""The contract between the protocol layer and a model's scheduler.

The protocol layer validates a request (names, datatypes, shapes, ``max_batch_size``) and turns
it into an ``InferenceRequest`` of numpy arrays; the scheduler queues it, runs it on one of the
model's instances (alone or merged into a batch) off the event loop, and returns that request's
own outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from shipyard.serving_runtime.backends.base import BackendInstance
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


def create_scheduler(
    config: object,
    instances: Sequence[BackendInstance],
    model_name: str,
    version: int,
    model_dir: Path | None = None,
) -> Scheduler:
    """Build the scheduler the model config asks for (``config`` is a ``ModelConfig`` proto).

    With ``sequence_batching`` set: the sequence batcher (``sequence.py``; ``model_dir`` holds
    ``initial_state`` files). With ``dynamic_batching`` set: the dynamic batcher (``max_batch_size``, preferred sizes,
    queue delay, priority levels and queue policies). Without: requests run one by one on the
    instances, as Triton does. One worker thread per instance in ``instances``; threads start
    with the first request.

    Raises: ModelConfigError naming the model and the bad ``dynamic_batching`` field;
    ValueError when ``instances`` is empty.
    """
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher, settings_from_config

    where = f"model {model_name!r} version {version}"
    if config.HasField("sequence_batching"):  # type: ignore[attr-defined]
        from shipyard.serving_runtime.scheduling.sequence import SequenceBatcher
        from shipyard.serving_runtime.scheduling.sequence_config import settings_from_config as sequence_settings

        settings = sequence_settings(config, len(instances), model_dir, where)
        return SequenceBatcher(instances, model_name, version, settings)
    batching, queueing = settings_from_config(config, where)
    return DynamicBatcher(instances, model_name, version, batching, queueing)
