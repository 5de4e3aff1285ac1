"""Per-model scheduling: queue, batching decision, instance dispatch.

Public surface: ``InferenceRequest``, ``Scheduler`` and ``create_scheduler``.
"""

from shipyard.serving_runtime.scheduling.api import InferenceRequest, Scheduler
from shipyard.serving_runtime.scheduling.factory import create_scheduler

__all__ = ["InferenceRequest", "Scheduler", "create_scheduler"]
