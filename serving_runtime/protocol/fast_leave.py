"""Clients that leave while their fast-path group is queued: the group runs without them.

On the Python path a request whose client goes away (a gRPC call cancelled or past its deadline, an
HTTP connection closed) while it waits in the dynamic batcher's queue leaves the queue, never runs
and counts as CANCELED; one that is already executing runs to its end and is counted by its outcome
(as in Triton). The fast paths (the native gRPC path, ``native_fast``; the REST lane,
``rest_fast``) queue several client requests as ONE request of the batcher (a group), so the same
rule applies per member: ``Leaving.leave`` (``scheduling/group.py``) asks the batcher to take that
member out of its queued group (``InferenceRequest.leave``, ``DynamicBatcher._leave``: its rows
leave the group's inputs, it counts CANCELED, a group left empty leaves the queue and fails with
``RequestCancelled``), and False means the group is executing (or was never queued: it ran inline),
so the member is treated as executing.

Who notices: C++ (grpc's ``OnCancel``, the call is answered CANCELLED there) hands the call id to
the event loop (``native_grpc``); the lane's protocol sees its connection close
(``connection_lost``). Everything else happens on the event loop.

Answers keep their shape: the native side splits a group's outputs by its requests' rows, so
``expand`` puts the rows of the members that stayed back in place (a left member's rows are zeros,
answered to a call that has ended; C++ drops them), and a Python model's per-request answers get
CANCELLED for a left member (``native_fast_python.answered_each``).
"""

from __future__ import annotations

from shipyard.serving_runtime.scheduling.group import Leaving

__all__ = ["Leaving"]
