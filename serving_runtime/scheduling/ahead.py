"""Send ahead: a Python model's next batch is written to its process before the current one ends.

A Python model's instance runs in its own process. Without this, when a batch ends the process
idles while its reply travels to the instance thread, the thread posts the batch's end to the
event loop, the loop forms the next batch, hands it to the thread, and the thread writes it to
the process: five wake-ups in a row, each waiting for a CPU (and the thread and the loop for
the GIL). Traced under load (``python -m benchmarks.py_gap_trace``, ``mlp_py`` at c=16, 2-core
machine), that idled the model ~0.9 ms between batches of ~3.4 ms: it was in ``execute`` 69-75%
of the time.

So while a batch runs, the dynamic batcher arms a timer for a little before the batch is expected
to end (``LEAD_FRACTION`` of the last batch's compute time, at most ``LEAD_MAX_NS``); then it
forms the next batch from what is queued, with the same decision as for an idle instance, and
the event loop writes its call to the process at once (``PythonInstance.send_ahead``). The
process reads it the moment it has answered the current batch; the instance thread reads the
second reply after the first (``finish_ahead``). One batch at most is written ahead; requests
that arrive after it wait for the next. The batch decision is unchanged; only what is queued a
short while before the instance is free goes, instead of what is queued when it is.

Used for one real-time instance (no idle lane or slicing) of a backend with ``send_ahead``
(Python models), with dynamic batching. Off by default, ``SHIPYARD_SEND_AHEAD=1`` turns it on: on
the shared, loaded 2-core machine it shortened the model's idle time between batches (trace p50
0.9 against 1.5 ms) but the batches written ahead held fewer requests (6.5 against 7.7 at c=16)
and throughput did not follow (docs/serving.md, Python models, "Send ahead"); a quiet machine
has to decide.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

AHEAD_ENV = "SHIPYARD_SEND_AHEAD"
LEAD_FRACTION = 0.15
LEAD_MAX_NS = 1_000_000


class SendAhead:
    """The send-ahead state of one dynamic batcher (event loop thread only)."""

    def __init__(self) -> None:
        self.estimate_ns: int | None = None  # the last batch's compute time
        self.last_size = 0  # the last batch's requests
        self.batch: Any = None  # the batch written ahead, not yet started

    def finished(self, compute_ns: int, requests: int) -> None:
        """A batch of ``requests`` took ``compute_ns``: the next is expected to take as long."""
        self.estimate_ns = compute_ns
        self.last_size = requests

    def full(self, queued: int, max_requests: int) -> bool:
        """Whether ``queued`` requests make a batch as big as the last (or the largest): only such a
        batch is written ahead, so writing early never splits the callers into smaller batches."""
        return queued >= min(self.last_size, max_requests)

    def send_at(self, start_ns: int) -> int | None:
        """When to write the batch after the one that started at ``start_ns`` (monotonic ns);
        None until a batch has been timed."""
        estimate = self.estimate_ns
        if estimate is None:
            return None
        return start_ns + estimate - min(int(estimate * LEAD_FRACTION), LEAD_MAX_NS)


def ahead_for(instances: Sequence[Any], merge: bool, plain: bool) -> SendAhead | None:
    """The send-ahead rule for a dynamic batcher over ``instances``, or None where it does not
    apply; ``plain``: no idle lane or slicing."""
    if os.environ.get(AHEAD_ENV, "0") != "1" or not merge or not plain or len(instances) != 1:
        return None
    if not callable(getattr(instances[0], "send_ahead", None)):
        return None
    return SendAhead()
