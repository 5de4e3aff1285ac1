"""Requests run one by one on the model's instances (Triton's default scheduler, no batching).

The dynamic batcher's machinery with merging turned off: a FIFO queue, no delay, each request
executed alone (its tensors passed as they are) on the next free instance thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.scheduling.dynamic import BatchingSettings, DynamicBatcher


class SequentialScheduler(DynamicBatcher):
    """Each instance takes one request at a time, in its own worker thread."""

    def __init__(self, instances: Sequence[BackendInstance], model_name: str, version: int) -> None:
        """Raises: ValueError when ``instances`` is empty."""
        super().__init__(instances, model_name, version, BatchingSettings(merge=False))
