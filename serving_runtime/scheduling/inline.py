"""When the dynamic batcher runs a batch on the event loop's thread instead of its instance's.

Tiny models run inline: when an instance is idle, nothing is queued, no queue delay is set, the
instance declares ``inline_safe`` (CPU ONNX Runtime sessions do) and its batches have been taking
at most ``INLINE_MAX_COMPUTE_NS`` for this request's size, ``DynamicBatcher.submit`` runs the
request on the event loop thread at once. Handing a batch to a thread and back costs the loop more
than such a model's compute (docs/serving.md, "Tiny models run inline"). The cost is estimated per
size class (``inline_cost.py``): a tiny model's fixed per-call cost does not grow with its rows, so
a group of 64 items runs inline as a lone item does, and a stall (an inline batch that took more
than ``INLINE_STALL_NS``) moves the model back to its thread at once.

The dynamic batcher owns the instances and the queue; this module owns the rule (``InlineRule``):
the expected compute, the budgets and the per-turn cap. Everything here runs on the event loop's
thread.
"""

from __future__ import annotations

import asyncio

from shipyard.serving_runtime.scheduling.inline_cost import ComputeEstimate

# The longest a request may be expected to compute on the loop, the growth of the per-item estimate
# per slower batch, and the compute time of an inline batch that switches inlining off at once.
INLINE_MAX_COMPUTE_NS = 50_000
INLINE_ESTIMATE_GROWTH = 1.05
INLINE_STALL_NS = 500_000
# Inline requests per turn of the event loop before the rest take the queue (``InlineRule.take_turn``).
INLINE_PER_TURN = 64
# A lone ensemble step (``RequestGroup.lone``, c=1) runs inline up to this compute
# (``DynamicBatcher._runs_lone_inline``).
LONE_INLINE_MAX_COMPUTE_NS = 4_000_000


class InlineRule:
    """One model version's inline decisions: ``enabled`` (no queue delay, every instance
    ``inline_safe``), the expected compute by batch size (``cost``) and the per-turn cap."""

    __slots__ = ("_count", "cost", "enabled")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.cost = ComputeEstimate(INLINE_ESTIMATE_GROWTH)
        self._count = 0  # inline requests in this turn of the loop (``take_turn``)

    def fits(self, size: int, budget_ns: int | None = None) -> bool:
        """Whether a batch of ``size`` items may run inline: the model runs inline and such a batch is
        expected to compute within ``budget_ns`` (default ``INLINE_MAX_COMPUTE_NS``; nothing is
        expected before a first batch has run)."""
        if not self.enabled:
            return False
        expected = self.cost.predict(size)
        return expected is not None and expected <= (INLINE_MAX_COMPUTE_NS if budget_ns is None else budget_ns)

    def take_turn(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether another request may run inline in this turn of the loop (and counts it). A request
        that runs inline returns without suspending its caller, so a caller awaiting requests one
        after another (``while not stop.is_set(): await model.infer(...)``) would never let the loop
        run anything else, the task that sets ``stop`` included. After ``INLINE_PER_TURN`` inline
        requests in one turn the rest take the queue, whose future suspends the caller (and a batch
        formed from the queue still runs inline in ``DynamicBatcher._kick``, on a later callback)."""
        if self._count == 0:
            loop.call_soon(self._new_turn)
        elif self._count >= INLINE_PER_TURN:
            return False
        self._count += 1
        return True

    def _new_turn(self) -> None:
        self._count = 0

    def observe(self, compute_ns: int, size: int, inline: bool = False) -> None:
        """A batch of ``size`` items computed for ``compute_ns``; ``inline``: on the loop (a stall
        there replaces every size class's estimate)."""
        self.cost.observe(compute_ns, size, stall=inline and compute_ns > INLINE_STALL_NS)
