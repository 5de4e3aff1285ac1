"""Python models on the native gRPC fast path: C++ groups, Python's ``execute`` still sees each request.

C++ parses, checks and groups plain ModelInfer requests as for any model (``native_fast``); the
group runs as ONE request of the model's dynamic batcher, a ``scheduling.group.RequestGroup``
whose members are the client requests (their own rows, ids and requested outputs), so the
Python backend hands ``TritonPythonModel.execute`` one ``pb_utils.InferenceRequest`` per client
request, exactly as on the Python path (and as Triton does).

The answer: when every member succeeded with plain outputs whose first dimension is its own row
count, the outputs come back joined and C++ splits and serializes them per request
(``FastBatch.complete``). Otherwise (a member's error, response parameters, BYTES or other
shapes) each request is answered on its own with what the Python path would send
(``FastBatch.answer_each``): the same ``collect_outputs`` and ``encode_infer_response``, the same
status and message for an error. ``is_cancelled()`` follows the client: a cancelled call marks
its member cancelled for the model (``cancel_call``).

Needs a native module built with ``answer_each``; an older build keeps Python models on the
Python path.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Sequence
from typing import Any

import grpc

from shipyard.serving_runtime.errors import BackendError, ModelNotReady, RequestCancelled, ServingError
from shipyard.serving_runtime.protocol.grpc_codec import encode_infer_response
from shipyard.serving_runtime.protocol.types import ModelLike
from shipyard.serving_runtime.protocol.validate import collect_outputs
from shipyard.serving_runtime.scheduling.group import GroupResults, RequestGroup, group_results, make_group

_INTERNAL = int(grpc.StatusCode.INTERNAL.value[0])


PYTHON_MODELS_ENV = "SHIPYARD_PYTHON_FAST_PATH"


def python_models_on() -> bool:
    """True when Python models take the fast path (``SHIPYARD_PYTHON_FAST_PATH=1``; off by default: on
    the quiet machine it measured no faster than the Python path, docs/serving.md "Python models")."""
    return os.environ.get(PYTHON_MODELS_ENV, "0") == "1"


def supported() -> bool:
    """True when the built native module can answer a group request by request."""
    try:
        native = importlib.import_module("shipyard.serving_runtime.protocol._grpc_native")
    except ImportError:
        return False
    return hasattr(getattr(native, "FastBatch", None), "answer_each")


def per_request(model: ModelLike) -> bool:
    """True when ``model`` sees each client request (a Python model, an ensemble)."""
    return getattr(model, "backend", "") == "python" or per_member(model)


def per_member(model: ModelLike) -> bool:
    """True when each request of a group runs as its own request of ``model`` (an ensemble)."""
    from shipyard.serving_runtime.scheduling.ensemble import EnsembleScheduler

    return type(getattr(model, "scheduler", None)) is EnsembleScheduler


def ensemble_ok(scheduler: Any) -> bool:
    """True when ``scheduler`` is an ensemble's and the native module can answer request by request."""
    from shipyard.serving_runtime.scheduling.ensemble import EnsembleScheduler

    return type(scheduler) is EnsembleScheduler and supported()


GROUPS_ENV = "SHIPYARD_ENSEMBLE_GROUPS"


def ensemble_groups_on() -> bool:
    """True (the default) when an ensemble runs a fast-path group's requests together, each step as
    one group of its model (``scheduling/ensemble_group.py``); ``SHIPYARD_ENSEMBLE_GROUPS=0``: each
    request on its own, as on the Python path."""
    return os.environ.get(GROUPS_ENV, "1") != "0"


async def infer_each(model: ModelLike, group: RequestGroup, batch: Any, members: Members) -> Any:
    """Run the members of ``group`` as requests of ``model`` (an ensemble: its statistics, steps
    and errors are per request, as on the Python path): together (``submit_group``; each member's
    ``cancel_hook`` follows its client), or each as its own task; the group's results
    (``group_results``), or None when every member found the model unloading (fall back)."""
    submit_group = getattr(getattr(model, "scheduler", None), "submit_group", None)
    if submit_group is not None and ensemble_groups_on():
        outcomes = await submit_group(group.members)
        if outcomes is None:
            return None
    else:
        tasks = [asyncio.ensure_future(model.infer(member)) for member in group.members]
        members.add_tasks(batch, tasks)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        if all(isinstance(outcome, ModelNotReady) for outcome in outcomes):
            return None
    parts: list[Any] = []
    for outcome in outcomes:
        if isinstance(outcome, asyncio.CancelledError):  # the client went away: C++ answered it
            parts.append(RequestCancelled("request cancelled by the client before it finished"))
        elif isinstance(outcome, BaseException) and not isinstance(outcome, ServingError):
            if not isinstance(outcome, Exception):
                raise outcome
            parts.append(BackendError(f"internal error: {type(outcome).__name__}: {outcome}"))
        else:
            parts.append(outcome)
    results = group_results(group, parts)
    if isinstance(results, ServingError):
        raise results
    return results


def group_request(batch: Any) -> RequestGroup:
    """The scheduler's request for a native group of a Python model's requests."""
    return make_group(batch.inputs(), batch.rows, batch.ids, batch.requested, batch.arrivals, batch.outputs)


def _status(error: ServingError) -> tuple[int, str]:
    return int(grpc.StatusCode[error.grpc_code].value[0]), error.message


def answered_each(
    batch: Any, model: ModelLike, group: RequestGroup, results: Any, gone: Sequence[bool] | None = None
) -> bool:
    """Answer each request of ``batch`` on its own when its members' outputs did not join
    (see the module docstring); False when the joined outputs are to be sent (``complete``).
    ``gone``: per request of ``batch``, True when it left the group while queued (``fast_leave``):
    it is not among ``group.members`` any more and its (ended) call gets CANCELLED."""
    if not isinstance(results, GroupResults) or results.joined:
        return False
    answers: list[Any] = []
    version = str(model.version)
    stayed = iter(zip(group.members, results.parts, strict=True))
    for left in gone if gone is not None else [False] * len(group.members):
        if left:
            answers.append(_status(RequestCancelled("request cancelled by the client before it finished")))
            continue
        member, part = next(stayed)
        if isinstance(part, ServingError):
            answers.append(_status(part))
            continue
        try:
            outputs = collect_outputs(model, member, part)
            response = encode_infer_response(
                model.name, version, member.request_id or None, outputs, getattr(part, "parameters", None)
            )
            answers.append(response.SerializeToString())
        except ServingError as exc:
            answers.append(_status(exc))
        except Exception as exc:  # as the Python path's ModelInfer answers it
            answers.append((_INTERNAL, f"internal error: {type(exc).__name__}: {exc}"))
    batch.answer_each(answers)
    return True


class Members:
    """The members of the groups in progress by call id, to mark a cancelled call's (event loop only)."""

    def __init__(self) -> None:
        self._by_call: dict[int, Any] = {}

    def add(self, batch: Any, group: RequestGroup) -> None:
        for call_id, member in zip(batch.call_ids, group.members, strict=True):
            self._by_call[call_id] = member

    def add_tasks(self, batch: Any, tasks: Sequence[asyncio.Future[Any]]) -> None:
        """Each request's own task (an ensemble's members): a cancelled call cancels it."""
        for call_id, task in zip(batch.call_ids, tasks, strict=True):
            self._by_call[call_id] = task

    def remove(self, batch: Any) -> None:
        for call_id in batch.call_ids:
            self._by_call.pop(call_id, None)

    def cancel(self, call_id: int) -> None:
        """The client cancelled ``call_id`` (C++ has answered it): tell the model, if it runs."""
        member = self._by_call.pop(call_id, None)
        if isinstance(member, asyncio.Future):
            member.cancel()
            return
        hook = getattr(member, "cancel_hook", None)
        if hook is not None:
            hook()
