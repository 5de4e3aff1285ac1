"""``create_scheduler``: the scheduler a model config asks for, over the model's instances.

A new scheduler for models with instances plugs in here: implement ``api.Scheduler`` (``submit``,
``pending_count``, ``drain``, ``close``, ``stats``) and return it for the config that selects
it. A model without instances of its own (an ensemble) passes its scheduler to ``ServedModel``
instead (``serving_runtime/ensemble.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shipyard.serving_runtime.backends.base import BackendInstance
from shipyard.serving_runtime.scheduling.api import Scheduler
from shipyard.serving_runtime.scheduling.batching import settings_from_config
from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher


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
    where = f"model {model_name!r} version {version}"
    if config.HasField("sequence_batching"):  # type: ignore[attr-defined]
        from shipyard.serving_runtime.scheduling.sequence import SequenceBatcher
        from shipyard.serving_runtime.scheduling.sequence_config import settings_from_config as sequence_settings

        settings = sequence_settings(config, len(instances), model_dir, where)
        return SequenceBatcher(instances, model_name, version, settings)
    batching, queueing = settings_from_config(config, where)
    return DynamicBatcher(instances, model_name, version, batching, queueing)
