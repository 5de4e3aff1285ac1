"""The ensemble scheduler: runs an ensemble request as requests to its composing models.

``serving_runtime/ensemble.py`` builds and checks the plan (which step reads and writes which
tensor); this module runs it. Each step is submitted to its composing model (``model.infer``, the
model's own scheduler, so it batches with that model's other traffic); a step starts as soon as
its input tensors exist, so steps that do not depend on each other run concurrently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.serving_runtime.errors import InvalidArgument, ModelNotReady, ServingError
from shipyard.serving_runtime.scheduling.api import InferenceRequest
from shipyard.serving_runtime.stats import ModelStats

# (model name, version or None for the latest) -> a loaded model (ServedModel-like)
Resolver = Callable[[str, "int | None"], Any]


@dataclass(frozen=True)
class Step:
    """One ``ensemble_scheduling.step``."""

    index: int
    model_name: str
    version: int | None  # None: the latest ready version (model_version -1)
    input_map: Mapping[str, str]  # composing model input -> ensemble tensor
    output_map: Mapping[str, str]  # composing model output -> ensemble tensor

    def label(self, ensemble: str) -> str:
        return f"ensemble {ensemble!r} step {self.index} (model {self.model_name!r})"


@dataclass(frozen=True)
class EnsemblePlan:
    """The steps of an ensemble and which step produces each tensor (-1: the request)."""

    name: str
    steps: tuple[Step, ...]
    producers: Mapping[str, int]
    outputs: tuple[str, ...]

    def models(self) -> list[str]:
        """Composing model names, in step order, each once."""
        return list(dict.fromkeys(step.model_name for step in self.steps))


class EnsembleScheduler:
    """Runs an ensemble request: each step through its composing model's own scheduler."""

    def __init__(self, plan: EnsemblePlan, resolve: Resolver, version: int) -> None:
        self.plan = plan
        self._resolve = resolve
        self.stats = ModelStats(plan.name, version)
        self._pending = 0
        self._accepting = True
        self._drained: asyncio.Future[None] | None = None

    async def submit(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        """Run every step (independent ones concurrently); return the requested ensemble outputs.

        Raises: ModelNotReady (draining, or a composing model is not loaded), and whatever a step
        raises (its model's error, named by the step).
        """
        if not self._accepting:
            raise ModelNotReady(f"ensemble {self.plan.name!r} is unloading; retry against the new version")
        self._pending += 1
        self.stats.pending = self._pending
        start = time.monotonic_ns()
        try:
            tensors = await self._run(request)
        except ServingError as exc:
            self.stats.record_failure(exc.reason, time.monotonic_ns() - start)
            raise _in_ensemble(self.plan.name, exc) from None
        except BaseException:
            self.stats.record_failure("BACKEND", time.monotonic_ns() - start)
            raise
        finally:
            self._release()
        elapsed = time.monotonic_ns() - start
        self.stats.record_execution(request.batch_size, elapsed)
        self.stats.record_success(request.batch_size, elapsed, 0, elapsed)
        wanted = request.outputs or self.plan.outputs
        return {name: tensors[name] for name in wanted}

    async def _run(self, request: InferenceRequest) -> dict[str, np.ndarray]:
        tensors: dict[str, np.ndarray] = dict(request.inputs)

        async def run(step: Step) -> None:
            results = await self._step(step, request, tensors)
            for model_output, tensor in step.output_map.items():
                tensors[tensor] = results[model_output]

        stuck = await run_steps(self.plan.steps, set(tensors), run)
        if stuck:  # cannot happen for a planned ensemble; never spin
            raise stuck_error(self.plan.name, stuck)
        return tensors

    async def _step(
        self, step: Step, request: InferenceRequest, tensors: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        model = self._resolve(step.model_name, step.version)
        inputs = {model_input: tensors[tensor] for model_input, tensor in step.input_map.items()}
        _check_step_inputs(self.plan.name, step, model, inputs)
        results: dict[str, np.ndarray] = await model.infer(step_request(step, request, model, inputs))
        error = missing_outputs(self.plan.name, step, results)
        if error is not None:
            raise error
        return results

    async def submit_group(self, requests: Sequence[InferenceRequest]) -> list[Any] | None:
        """Run ``requests`` together, each step as one group of its model (``ensemble_group``):
        each request's outputs or its own error, or None (unloading: retry them one by one)."""
        from shipyard.serving_runtime.scheduling.ensemble_group import run_group

        return await run_group(self, requests)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def resolve(self, name: str, version: int | None) -> Any:
        """The loaded model a step names (raises ModelNotReady / ModelNotFound as the resolver does)."""
        return self._resolve(name, version)

    def hold(self, count: int) -> None:
        """``count`` requests accepted (``drain`` waits for them until ``_release``)."""
        self._pending += count
        self.stats.pending = self._pending

    def release(self, count: int) -> None:
        """``count`` accepted requests finished."""
        self._release(count)

    def pending_count(self) -> int:
        return self._pending

    def _release(self, count: int = 1) -> None:
        self._pending -= count
        self.stats.pending = self._pending
        if self._pending == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        """Stop accepting; return when every accepted request has finished."""
        self._accepting = False
        if self._pending == 0:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drained)

    def close(self) -> None:
        """Nothing to release: the composing models own their instances."""


async def run_steps(steps: Sequence[Step], known: set[str], run: Callable[[Step], Awaitable[None]]) -> list[Step]:
    """Run every step once the tensors it reads are ``known`` (the request's inputs, then each
    finished step's outputs), independent ones concurrently, the only runnable one without a task;
    ``run(step)`` does the work. The steps that could never start (none for a planned ensemble
    whose inputs were all sent); a step's exception ends the run (the others are cancelled)."""
    waiting = list(steps)
    running: dict[asyncio.Task[None], Step] = {}
    try:
        while waiting or running:
            ready = [s for s in waiting if all(t in known for t in s.input_map.values())]
            for step in ready:
                waiting.remove(step)
            if len(ready) == 1 and not running:
                await run(ready[0])
                known.update(ready[0].output_map.values())
                continue
            for step in ready:
                running[asyncio.ensure_future(run(step))] = step
            if not running:
                return waiting
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                step = running.pop(task)
                task.result()  # raises the step's error
                known.update(step.output_map.values())
    finally:
        for task in running:
            task.cancel()
    return []


def stuck_error(ensemble: str, stuck: Sequence[Step]) -> ModelNotReady:
    return ModelNotReady(f"ensemble {ensemble!r}: steps {[s.index for s in stuck]} cannot start")


def missing_outputs(ensemble: str, step: Step, results: Mapping[str, np.ndarray]) -> InvalidArgument | None:
    """The error for a step whose model did not return every output the step maps, or None."""
    missing = [name for name in step.output_map if name not in results]
    if not missing:
        return None
    return InvalidArgument(f"{step.label(ensemble)}: the model returned no output(s) {', '.join(missing)}")


def _in_ensemble(name: str, exc: ServingError) -> ServingError:
    """The step's error, same class (status), its message prefixed as Triton's: "in ensemble 'e', ..."."""
    prefix = f"in ensemble {name!r}, "
    if exc.message.startswith(prefix):
        return exc
    cls = type(exc)
    wrapped: ServingError = ServingError.__new__(cls)  # a copy: subclasses may take other constructor arguments
    wrapped.__dict__.update(exc.__dict__)
    wrapped.message = prefix + exc.message
    wrapped.args = (wrapped.message,)
    return wrapped


@dataclass(frozen=True)
class _InputRule:
    datatype: str
    dtype: np.dtype | None  # None: BYTES (object arrays)
    dims: tuple[int, ...]


_RULES: dict[int, tuple[Any, dict[str, _InputRule]]] = {}


def _input_rules(model: Any) -> dict[str, _InputRule]:
    """Per model version (the object), the datatype and dims of each input; computed once."""
    from shipyard.serving_runtime.datatypes import triton_to_numpy

    entry = _RULES.get(id(model))
    if entry is not None and entry[0] is model:
        return entry[1]
    rules = {
        s.name: _InputRule(s.datatype, None if s.datatype == "BYTES" else triton_to_numpy(s.datatype), tuple(s.dims))
        for s in model.inputs
    }
    if len(_RULES) > 256:
        _RULES.clear()
    _RULES[id(model)] = (model, rules)
    return rules


def step_request(
    step: Step, request: InferenceRequest, model: Any, inputs: dict[str, np.ndarray]
) -> InferenceRequest:
    """The request ``step`` sends to its ``model`` for the ensemble's ``request``: the step's inputs, its
    outputs, the client's priority, timeout, id and parameters; the batch size of the inputs when the
    model batches."""
    batch = request.batch_size
    if int(model.max_batch_size) > 0 and inputs:
        batch = int(next(iter(inputs.values())).shape[0])
    return InferenceRequest(
        inputs=inputs,
        outputs=tuple(step.output_map),
        batch_size=batch,
        priority=request.priority,
        timeout_us=request.timeout_us,
        request_id=request.request_id,
        parameters=dict(request.parameters),
    )


def _check_step_inputs(ensemble: str, step: Step, model: Any, inputs: Mapping[str, np.ndarray]) -> None:
    """What the protocol layer checks for a client request, for the tensors a step passes on.

    Raises: InvalidArgument naming the step and the input.
    """
    rules = _input_rules(model)
    max_batch = int(model.max_batch_size)
    for name, array in inputs.items():
        rule = rules[name]
        if array.dtype != (rule.dtype if rule.dtype is not None else np.object_):
            from shipyard.serving_runtime.datatypes import numpy_to_triton

            got = numpy_to_triton(array.dtype)
            if got != rule.datatype:
                raise InvalidArgument(f"{step.label(ensemble)}: input {name!r} got {got}, expected {rule.datatype}")
        shape = array.shape[1:] if max_batch > 0 else array.shape
        if max_batch > 0 and array.shape[0] > max_batch:
            raise InvalidArgument(
                f"{step.label(ensemble)}: input {name!r} has batch size {array.shape[0]}, above the model's "
                f"max_batch_size {max_batch}"
            )
        if shape != rule.dims and (
            len(shape) != len(rule.dims) or any(d not in (-1, s) for s, d in zip(shape, rule.dims, strict=True))
        ):
            expected = [-1, *rule.dims] if max_batch > 0 else list(rule.dims)
            raise InvalidArgument(
                f"{step.label(ensemble)}: input {name!r} has shape {list(array.shape)}, the model expects {expected}"
            )
