"""An ensemble run over a group of client requests at once (the native gRPC fast path's groups).

``EnsembleScheduler.submit`` runs one request: per step, one request to the step's model, one
future, one wake-up of the event loop, so a group of N client requests costs N of each per step.
``run_group`` runs the N requests together: each step submits ONE ``RequestGroup`` to its model
(one queue entry that counts as N requests, ``RequestQueue.weight``), whose members are the
client requests' own step requests, so a Python model's ``execute`` still receives one
``InferenceRequest`` per client request and every model's statistics count N requests and one
execution per batch, exactly as when the requests arrive on their own. The step's answer comes
back per member (``GroupResults.parts``, or the joined outputs split by rows) and is wired to the
next step per member; a member whose step failed leaves the group with its own error ("in
ensemble 'e', ..."), the others go on. The ensemble's statistics count each member as
``submit`` does.

A step runs member by member (as ``submit`` would) when its model does not take groups: not a
dynamic batcher, no batch dimension, decoupled, more rows than its ``max_batch_size``, or its
queue refused the group (``max_queue_size`` counts requests; each is then queued or refused on
its own). A member whose client cancelled (``cancel_hook``, called by the fast path) is told to
its step: while the step's group is queued, the request leaves it (``RequestGroup.leave``: the
step model never runs it and counts it CANCELED, as a cancelled request leaves the queue on the
Python path); once it executes, the model is told (``is_cancelled()``). Either way the request
leaves the ensemble's group.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.serving_runtime.errors import (
    BackendError,
    ModelNotReady,
    QueueFull,
    RequestCancelled,
    ServingError,
)
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.scheduling.group import GroupResults, RequestGroup

if TYPE_CHECKING:
    from shipyard.serving_runtime.scheduling.ensemble import EnsembleScheduler, Step

_CANCELLED = "request cancelled by the client before it finished"
# A step's group waits for the others of its turn of the event loop (``RequestGroup.formed``):
# the groups of one batch of the step before reach the next step together and batch as one.
# Unless it is a later step and the ensemble has no other group in flight (c=1): none can join
# it, so it starts at once (``_alone``).
# SHIPYARD_ENSEMBLE_JOIN=0: each group starts an idle instance at once (for A/B runs).
JOIN_ENV = "SHIPYARD_ENSEMBLE_JOIN"
# Such a lone group of a model that runs inline runs on the event loop when nothing else is
# pending (``RequestGroup.lone``, ``DynamicBatcher._runs_lone_inline``); SHIPYARD_ENSEMBLE_INLINE=0
# sends it to the instance's thread as before (for A/B runs).
INLINE_ENV = "SHIPYARD_ENSEMBLE_INLINE"


class _Member:
    """One client request on its way through the steps: its tensors, or its outcome once known."""

    __slots__ = ("outcome", "request", "running", "tensors")

    def __init__(self, request: InferenceRequest) -> None:
        self.request = request
        self.tensors: dict[str, np.ndarray] = dict(request.inputs)
        self.outcome: Any = None  # its outputs or its error, once it has one
        # in flight: (step group, its request) or the task of its request of a step run one by one
        self.running: list[Any] = []

    def cancel(self) -> None:
        """The client went away: out of its step's queued group, or the model running it is told;
        the member leaves the ensemble's group."""
        if self.outcome is None:
            self.outcome = RequestCancelled(_CANCELLED)
        for item in self.running:
            if isinstance(item, asyncio.Future):
                item.cancel()
                continue
            group, sub = item
            if _leave(group, sub):
                continue
            hook = getattr(sub, "cancel_hook", None)
            if hook is not None:
                hook()


def _leave(group: RequestGroup, sub: InferenceRequest) -> bool:
    """Take ``sub`` out of ``group`` while the group is queued (False: it executes, or has left)."""
    if group.leave is None or not any(member is sub for member in group.members):
        return False
    position = next(i for i, member in enumerate(group.members) if member is sub)
    start = sum(member.batch_size for member in group.members[:position])
    return group.leave(position, start, start + sub.batch_size)


async def run_group(scheduler: EnsembleScheduler, requests: Sequence[InferenceRequest]) -> list[Any] | None:
    """Run ``requests`` through the ensemble together; each one's outputs or its own error (a
    ServingError named "in ensemble 'e', ..."), in order. None when the ensemble is unloading or
    every request found a model not ready (the caller retries them on the Python path)."""
    if not scheduler.accepting:
        return None
    names = requests[0].inputs.keys()
    if any(request.inputs.keys() != names for request in requests):  # optional inputs differ: one by one
        return await _one_by_one(scheduler, requests)
    members = [_Member(request) for request in requests]
    for member in members:
        setattr(member.request, "cancel_hook", member.cancel)  # noqa: B010 (the fast path's Members calls it)
    scheduler.hold(len(members))
    start = time.monotonic_ns()
    try:
        await _run_steps(scheduler, members)
    except BaseException:
        for member in members:
            if member.outcome is None:
                member.outcome = BackendError("internal error: the ensemble group was interrupted")
        _record(scheduler, members, start)
        raise
    finally:
        scheduler.release(len(members))
    plan = scheduler.plan
    for member in members:
        if member.outcome is None:
            wanted = member.request.outputs or plan.outputs
            member.outcome = {name: member.tensors[name] for name in wanted}
    _record(scheduler, members, start)
    outcomes = [member.outcome for member in members]
    if all(isinstance(o, ModelNotReady) for o in outcomes):
        return None
    return [_named(scheduler.plan.name, o) for o in outcomes]


async def _one_by_one(scheduler: EnsembleScheduler, requests: Sequence[InferenceRequest]) -> list[Any] | None:
    tasks = [asyncio.ensure_future(scheduler.submit(request)) for request in requests]
    for request, task in zip(requests, tasks, strict=True):
        setattr(request, "cancel_hook", task.cancel)  # noqa: B010
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    if all(isinstance(o, ModelNotReady) for o in outcomes):
        return None
    return _parts(outcomes)


def _parts(outcomes: Sequence[Any]) -> list[Any]:
    """Gathered outcomes as the fast path answers them: a cancelled one, an unexpected exception."""
    parts: list[Any] = []
    for outcome in outcomes:
        if isinstance(outcome, asyncio.CancelledError):
            parts.append(RequestCancelled(_CANCELLED))
        elif isinstance(outcome, ServingError) or not isinstance(outcome, BaseException):
            parts.append(outcome)
        elif isinstance(outcome, Exception):
            parts.append(_Internal(f"internal error: {type(outcome).__name__}: {outcome}"))
        else:
            raise outcome
    return parts


def _record(scheduler: EnsembleScheduler, members: list[_Member], start: int) -> None:
    elapsed = time.monotonic_ns() - start
    stats = scheduler.stats
    for member in members:
        outcome = member.outcome
        if isinstance(outcome, ServingError):
            stats.record_failure(outcome.reason, elapsed)
        else:
            size = member.request.batch_size
            stats.record_execution(size, elapsed)
            stats.record_success(size, elapsed, 0, elapsed)


def _named(ensemble: str, outcome: Any) -> Any:
    from shipyard.serving_runtime.scheduling.ensemble import _in_ensemble

    if isinstance(outcome, ServingError) and not isinstance(outcome, _Internal):
        return _in_ensemble(ensemble, outcome)
    return outcome


class _Internal(BackendError):
    """A step's unexpected (non-serving) exception: ``submit`` lets it out unnamed, and the fast
    path answers it as an internal error, without the ensemble's prefix."""


async def _run_steps(scheduler: EnsembleScheduler, members: list[_Member]) -> None:
    """The plan's steps, each as soon as its tensors exist (independent ones concurrently)."""
    from shipyard.serving_runtime.scheduling.ensemble import run_steps, stuck_error

    async def run(step: Step) -> None:
        await _step(scheduler, step, members)

    stuck = await run_steps(scheduler.plan.steps, set(members[0].request.inputs), run)
    if stuck:  # as ``submit`` fails: a step whose (optional) input was not sent
        error = stuck_error(scheduler.plan.name, stuck)
        for member in members:
            if member.outcome is None:
                member.outcome = error


async def _step(scheduler: EnsembleScheduler, step: Step, members: list[_Member]) -> None:
    """Run ``step`` for every member still in the group; each gets its outputs or its error."""
    from shipyard.serving_runtime.scheduling.ensemble import _check_step_inputs, missing_outputs

    live = [m for m in members if m.outcome is None]
    if not live:
        return
    try:
        model = scheduler.resolve(step.model_name, step.version)
    except ServingError as exc:
        for member in live:
            member.outcome = exc
        return
    subs: list[InferenceRequest] = []
    going: list[_Member] = []
    for member in live:
        try:
            sub = _sub_request(step, member, model)
            _check_step_inputs(scheduler.plan.name, step, model, sub.inputs)
        except ServingError as exc:
            member.outcome = exc
            continue
        subs.append(sub)
        going.append(member)
    if not going:
        return
    parts: list[Any] | None = None
    if _takes_groups(model, subs):
        parts = await _as_group(model, going, subs, _alone(scheduler, step, members))
    if parts is None:
        parts = await _each(model, going, subs)
    for member, part in zip(going, parts, strict=True):
        if member.outcome is not None:  # cancelled meanwhile
            continue
        if isinstance(part, BaseException):
            member.outcome = part
            continue
        error = missing_outputs(scheduler.plan.name, step, part)
        if error is not None:
            member.outcome = error
            continue
        for model_output, tensor in step.output_map.items():
            member.tensors[tensor] = part[model_output]


def _alone(scheduler: EnsembleScheduler, step: Step, members: list[_Member]) -> bool:
    """True when no other group can join this one at ``step``: the ensemble has no other group in
    flight (c=1) and the step reads another step's outputs (a first step's group waits for the
    rest of its turn of the event loop, where other groups may arrive from the client)."""
    if scheduler.pending_count() != len(members):
        return False
    producers = scheduler.plan.producers
    return any(producers.get(tensor, -1) >= 0 for tensor in step.input_map.values())


def _sub_request(step: Step, member: _Member, model: Any) -> InferenceRequest:
    from shipyard.serving_runtime.scheduling.ensemble import step_request

    inputs = {model_input: member.tensors[tensor] for model_input, tensor in step.input_map.items()}
    return step_request(step, member.request, model, inputs)


def _takes_groups(model: Any, subs: list[InferenceRequest]) -> bool:
    """True when ``subs`` can go to ``model`` as one queue entry (see the module docstring)."""
    from shipyard.serving_runtime.scheduling.dynamic import DynamicBatcher

    if type(getattr(model, "scheduler", None)) is not DynamicBatcher:
        return False
    max_batch = int(model.max_batch_size)
    if max_batch <= 0 or sum(s.batch_size for s in subs) > max_batch:
        return False
    if model.config.model_transaction_policy.decoupled:
        return False
    first = subs[0]
    if any(s.priority != first.priority or s.timeout_us != first.timeout_us for s in subs):
        return False
    shapes = {name: (a.dtype, a.shape[1:]) for name, a in first.inputs.items()}
    return all(
        s.inputs.keys() == shapes.keys() and all((a.dtype, a.shape[1:]) == shapes[n] for n, a in s.inputs.items())
        for s in subs
    )


async def _as_group(
    model: Any, going: list[_Member], subs: list[InferenceRequest], alone: bool = False
) -> list[Any] | None:
    """``subs`` as one ``RequestGroup`` of ``model``; each member's outputs or error, or None when
    the model's queue refused the group (the caller queues them one by one). ``alone``: the
    ensemble has no other group in flight, so the group is formed (an idle instance starts it at
    once) instead of waiting for the rest of its turn of the event loop."""
    first = subs[0]
    if len(subs) == 1:
        inputs = dict(first.inputs)
    else:
        inputs = {name: np.concatenate([s.inputs[name] for s in subs]) for name in first.inputs}
    rows = [s.batch_size for s in subs]
    now = time.monotonic_ns()
    group = RequestGroup(
        inputs,
        first.outputs,
        batch_size=sum(rows),
        priority=first.priority,
        timeout_us=first.timeout_us,
        group_arrivals_ns=[now] * len(subs),
        members=list(subs),  # a member that leaves is taken out of this list
        formed=alone or os.environ.get(JOIN_ENV, "1") == "0",
        lone=alone and os.environ.get(INLINE_ENV, "1") != "0",
    )
    for member, sub in zip(going, subs, strict=True):
        member.running.append((group, sub))
    try:
        result = await model.infer(group)
    except QueueFull:
        return None
    except ServingError as exc:
        return [exc] * len(subs)
    except Exception as exc:  # as the Python path's per-request run reports it
        return [_Internal(f"internal error: {type(exc).__name__}: {exc}")] * len(subs)
    finally:
        for member, sub in zip(going, subs, strict=True):
            member.running = [item for item in member.running if not (isinstance(item, tuple) and item[1] is sub)]
    stayed = group.members  # without those whose clients left while it was queued
    parts = list(result.parts) if isinstance(result, GroupResults) else _split(result, [s.batch_size for s in stayed])
    if len(stayed) == len(subs):
        return parts
    by_sub = {id(sub): part for sub, part in zip(stayed, parts, strict=True)}
    return [by_sub.get(id(sub), RequestCancelled(_CANCELLED)) for sub in subs]


def _split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[Any]:
    """A joined answer cut back into each member's rows (views)."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            error = BackendError(
                f"output {name!r} has shape {list(array.shape)} but the batch has {total} items; "
                "a batched model must return the batch as the first dimension of every output"
            )
            return [error] * len(rows)
    parts: list[Any] = []
    start = 0
    for count in rows:
        parts.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return parts


async def _each(model: Any, going: list[_Member], subs: list[InferenceRequest]) -> list[Any]:
    """Each member's step request on its own (as ``EnsembleScheduler.submit`` runs it)."""
    tasks = [asyncio.ensure_future(model.infer(sub)) for sub in subs]
    for member, task in zip(going, tasks, strict=True):
        member.running.append(task)
    try:
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for member, task in zip(going, tasks, strict=True):
            member.running = [item for item in member.running if item is not task]
    return _parts(outcomes)
