"""How a model's requests merge into batches: ``max_batch_size`` and ``dynamic_batching`` read
from its config and checked (the dynamic batcher's settings; the queue's are in ``queue``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shipyard.serving_runtime.errors import ModelConfigError
from shipyard.serving_runtime.scheduling.background import BackgroundSettings, background_from_config
from shipyard.serving_runtime.scheduling.queue import QueueSettings, queue_settings_from_proto


@dataclass(frozen=True)
class BatchingSettings:
    """How requests merge. ``max_batch_size`` 0 with ``merge=False``: each request runs alone."""

    max_batch_size: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    merge: bool = True
    background: BackgroundSettings | None = None  # the lowest priority level's rules (background.py)

    def validate(self, where: str) -> None:
        """Raises: ModelConfigError naming ``where`` and the bad value."""
        if self.merge and self.max_batch_size < 1:
            raise ModelConfigError(
                f"{where}: batching needs max_batch_size >= 1, got {self.max_batch_size}; "
                "set max_batch_size or remove dynamic_batching"
            )
        for size in self.preferred_batch_sizes:
            if size < 1 or size > max(self.max_batch_size, 0):
                raise ModelConfigError(
                    f"{where}: dynamic_batching.preferred_batch_size {size} must be in 1..{self.max_batch_size} "
                    "(max_batch_size); lower it or raise max_batch_size"
                )
        if not 0 <= self.max_queue_delay_us <= MAX_QUEUE_DELAY_US:
            raise ModelConfigError(
                f"{where}: max_queue_delay_microseconds must be in 0..{MAX_QUEUE_DELAY_US} (60 s), got "
                f"{self.max_queue_delay_us}; a batching delay is a few milliseconds at most"
            )


MAX_QUEUE_DELAY_US = 60_000_000  # a longer batching delay is a typo; it would also hold shutdown that long


def settings_from_config(config: Any, where: str) -> tuple[BatchingSettings, QueueSettings]:
    """Read ``max_batch_size`` and ``dynamic_batching`` from a ``ModelConfig`` proto.

    Raises: ModelConfigError naming ``where`` and the bad field.
    """
    max_batch_size = int(config.max_batch_size)
    if not config.HasField("dynamic_batching"):
        return BatchingSettings(max_batch_size=max_batch_size, merge=False), QueueSettings()
    db = config.dynamic_batching
    batching = BatchingSettings(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(sorted(set(int(s) for s in db.preferred_batch_size))),
        max_queue_delay_us=int(db.max_queue_delay_microseconds),
        merge=max_batch_size > 0,
        background=background_from_config(config, int(db.priority_levels), where),
    )
    batching.validate(where)
    return batching, queue_settings_from_proto(db, where)
