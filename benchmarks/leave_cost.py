"""The per-group bookkeeping ``protocol/fast_leave.py`` adds to the fast paths, in isolation.

``python -m benchmarks.leave_cost``: ns per group for what ``native_fast._run`` / ``rest_fast._run``
and ``DynamicBatcher.submit`` now do for every group (a ``Leaving``, a set add and discard, the
queued group's ``leave`` hook set and cleared); nothing is added per request.
"""

from __future__ import annotations

import timeit
from functools import partial
from typing import Any

import numpy as np


def per_group_ns(number: int = 200_000, repeat: int = 5) -> float:
    from shipyard.serving_runtime.protocol.fast_leave import Leaving
    from shipyard.serving_runtime.scheduling.api import InferenceRequest

    request = InferenceRequest({"x": np.zeros((4, 16), np.float32)}, batch_size=4, group_arrivals_ns=[1, 2, 3, 4])
    groups: set[Any] = set()

    def rows(owner: Any) -> Any:
        return owner

    def added() -> None:
        leaving = Leaving(request, None, rows)
        groups.add(leaving)
        request.leave = partial(max, 0)  # DynamicBatcher.submit: partial(self._leave, envelope)
        if leaving.gone is not None:
            raise AssertionError
        request.leave = None  # submit's finally
        groups.discard(leaving)

    return min(timeit.repeat(added, number=number, repeat=repeat)) / number * 1e9


def main() -> None:
    print(f"fast_leave bookkeeping: {per_group_ns():.0f} ns per group")


if __name__ == "__main__":
    main()
