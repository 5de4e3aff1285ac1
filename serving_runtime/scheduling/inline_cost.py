"""How long a batch of N items is expected to compute: the dynamic batcher's inline decision.

A batch's compute is not proportional to its items. A tiny model (add_sub) costs a fixed ~10 µs of
ONNX Runtime call whatever the rows, so one per-item figure measured on 1-item batches predicts
8x too much for a group of 8 (and such groups went to the instance thread and back, which costs
the loop more than their compute: docs/serving.md, "Tiny models run inline"); one measured on
64-item batches predicts too little for a lone request of a weight-bound model.

So the estimate is kept per size class (1, 2-3, 4-7, 8-15, ...: the bit length of the item count),
each the lowest recent per-item cost seen in that class, rising by ``growth`` with each slower
batch (one preempted batch does not switch inlining off); a stall replaces every class's estimate
with its own (the model got slower: larger items, a busier machine). Within a
class the prediction is that per-item cost times the items, so for a fixed-cost model it can be
up to 2x low at the class's small end (the stall rule bounds what that costs). A class not seen
yet borrows from its neighbours:

- from the nearest smaller class seen: its per-item cost times the items (a larger batch costs at
  most proportionally more per item on the machines measured; usually less);
- else from the nearest larger class seen: the predicted compute of that class's smallest batch
  (fewer items do not cost more).
"""

from __future__ import annotations


class ComputeEstimate:
    """Expected compute (ns) of a batch of ``n`` items, learned from the batches that ran."""

    __slots__ = ("_growth", "_per_item")

    def __init__(self, growth: float) -> None:
        self._growth = growth
        self._per_item: dict[int, float] = {}  # size class -> estimated compute per item, ns

    def observe(self, compute_ns: int, size: int, stall: bool = False) -> None:
        """A batch of ``size`` items computed for ``compute_ns``; ``stall``: take it as the new
        estimate of its class at once (an inline batch that held the loop too long)."""
        size = max(size, 1)
        per_item = compute_ns / size
        cls = size.bit_length()
        estimate = self._per_item.get(cls)
        if stall:  # the model got slow (e.g. larger items): forget what the other sizes cost before
            self._per_item = {cls: per_item}
        elif estimate is None:
            self._per_item[cls] = per_item
        else:
            self._per_item[cls] = min(per_item, estimate * self._growth)

    def predict(self, size: int) -> float | None:
        """Expected compute of a batch of ``size`` items in ns; None when nothing ran yet."""
        if not self._per_item:
            return None
        size = max(size, 1)
        cls = size.bit_length()
        per_item = self._per_item.get(cls)
        if per_item is not None:
            return per_item * size
        smaller = [c for c in self._per_item if c < cls]
        if smaller:
            return self._per_item[max(smaller)] * size
        larger = min(self._per_item)  # every class seen is larger than this one
        return self._per_item[larger] * (1 << (larger - 1))  # that class's smallest batch
