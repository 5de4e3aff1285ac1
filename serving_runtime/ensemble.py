"""Ensembles (``platform: "ensemble"``): a pipeline of other models, as Triton runs it.

::

    platform: "ensemble"
    input [ { name: "IMAGE" ... } ]   output [ { name: "LABELS" ... } ]
    ensemble_scheduling { step [
      { model_name: "pre"  input_map { key: "RAW" value: "IMAGE" }  output_map { key: "PIXELS" value: "px" } },
      { model_name: "cnn"  input_map { key: "x" value: "px" }       output_map { key: "logits" value: "lg" } },
      { model_name: "post" input_map { key: "LOGITS" value: "lg" }  output_map { key: "TOP" value: "LABELS" } } ] }

``input_map`` maps a composing model's input to an ensemble tensor, ``output_map`` a composing
model's output to one. The tensors form a graph: every tensor is produced once (by the request
or by one step), every step input is produced somewhere, every ensemble output is produced by a
step, and there are no cycles. ``plan_ensemble`` checks that from the config alone;
``check_steps`` checks each step against its (loaded) composing model: the model exists, the
mapped names are its inputs and outputs, every required input is mapped, datatypes agree and
shapes are compatible. Every error names the ensemble and the step.

At run time each step is an ordinary request to its composing model, submitted through that
model's own scheduler (so it batches with the model's other traffic); a step starts as soon as
its inputs exist, so steps that do not depend on each other run concurrently. Composing models
are looked up per request (``resolve``), so a reloaded composing model serves the next request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

from shipyard.serving_runtime.errors import ModelConfigError, ServingError
from shipyard.serving_runtime.scheduling.ensemble import EnsemblePlan, EnsembleScheduler, Resolver, Step

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from shipyard.serving_runtime.model import ServedModel
    from shipyard.serving_runtime.repository import ModelDefinition, ModelLocation, RepositoryScan

ENSEMBLE_PLATFORM = "ensemble"
ENSEMBLE_BACKEND = "ensemble"  # the manager's backend name for ensembles (Triton leaves backend empty)


def is_ensemble(config: ModelConfig) -> bool:
    return str(config.platform) == ENSEMBLE_PLATFORM


def plan_ensemble(config: ModelConfig, source: str) -> EnsemblePlan:
    """Check the step graph of an ensemble config (no other model needed).

    Raises: ModelConfigError naming ``source``, the step and the tensor: no steps, a step with no
    model name, a tensor produced twice (or an ensemble input a step also produces), a step input
    nothing produces, an ensemble output no step produces, a cycle, or ``max_batch_size`` ... .
    """
    name = str(config.name)

    def fail(message: str) -> NoReturn:
        raise ModelConfigError(f"{source}: {message}")

    if not config.HasField("ensemble_scheduling") or not config.ensemble_scheduling.step:
        fail(f"ensemble {name!r} has no ensemble_scheduling steps; add ensemble_scheduling {{ step [ ... ] }}")
    producers: dict[str, int] = {t.name: -1 for t in config.input}
    steps: list[Step] = []
    for index, raw in enumerate(config.ensemble_scheduling.step):
        version = int(raw.model_version)
        step = Step(
            index, str(raw.model_name), None if version < 0 else version, dict(raw.input_map), dict(raw.output_map)
        )
        where = step.label(name)
        if not step.model_name:
            fail(f"ensemble {name!r} step {index} has no model_name")
        if not step.input_map:
            fail(f"{where} has no input_map; map each of the model's inputs to an ensemble tensor")
        if not step.output_map:
            fail(f"{where} has no output_map; map the outputs it produces to ensemble tensors")
        for tensor in step.output_map.values():
            earlier = producers.get(tensor)
            if earlier is not None:
                by = "the ensemble's input" if earlier == -1 else f"step {earlier}"
                fail(
                    f"{where} output_map writes tensor {tensor!r}, which {by} already produces; "
                    "each tensor has one producer"
                )
            producers[tensor] = index
        steps.append(step)
    for step in steps:
        for model_input, tensor in step.input_map.items():
            if tensor not in producers:
                fail(
                    f"{step.label(name)} input {model_input!r} reads tensor {tensor!r}, which neither the ensemble's "
                    "inputs nor any step's output_map produces"
                )
    for output in config.output:
        if producers.get(output.name, -1) == -1:
            fail(f"ensemble {name!r} output {output.name!r} is not produced by any step's output_map")
    _check_acyclic(name, steps, producers, fail)
    return EnsemblePlan(name, tuple(steps), producers, tuple(t.name for t in config.output))


def _check_acyclic(
    name: str, steps: Sequence[Step], producers: Mapping[str, int], fail: Callable[[str], NoReturn]
) -> None:
    """Kahn's algorithm over steps; what is left over sits on a cycle."""
    needs = {s.index: {producers[t] for t in s.input_map.values() if producers[t] >= 0} for s in steps}
    done: set[int] = set()
    progress = True
    while progress:
        progress = False
        for index, deps in needs.items():
            if index not in done and deps <= done:
                done.add(index)
                progress = True
    stuck = sorted(set(needs) - done)
    if stuck:
        fail(f"ensemble {name!r} steps {stuck} form a cycle: each waits for a tensor another produces")


def _dims_compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == -1 or y == -1 or x == y for x, y in zip(a, b, strict=True))


def check_steps(plan: EnsemblePlan, config: ModelConfig, resolve: Resolver, source: str) -> None:
    """Check every step against its composing model (loaded, reached through ``resolve``).

    Raises: ModelConfigError naming the step: unknown or unloaded model, a name that is not the
    model's input/output, a required input left unmapped, datatype or shape disagreements,
    a composing model that batches less than the ensemble.
    """
    from shipyard.serving_runtime.datatypes import config_to_triton

    batching = int(config.max_batch_size) > 0
    # ensemble tensor -> (datatype, dims without batch, who said so)
    known: dict[str, tuple[str, tuple[int, ...], str]] = {
        t.name: (config_to_triton(int(t.data_type)), tuple(t.dims), "the ensemble's input") for t in config.input
    }
    declared_outputs = {t.name: (config_to_triton(int(t.data_type)), tuple(t.dims)) for t in config.output}

    def fail(step: Step, message: str) -> NoReturn:
        raise ModelConfigError(f"{source}: {step.label(plan.name)} {message}")

    for step in plan.steps:
        try:
            model = resolve(step.model_name, step.version)
        except ServingError as exc:
            fail(step, f"cannot use its model: {exc.message}")
        if batching and int(model.max_batch_size) < int(config.max_batch_size):
            fail(
                step,
                f"has max_batch_size {model.max_batch_size}, below the ensemble's {config.max_batch_size}; "
                "lower the ensemble's max_batch_size",
            )
        inputs = {s.name: s for s in model.inputs}
        outputs = {s.name: s for s in model.outputs}
        optional = {t.name for t in model.config.input if t.optional}
        for model_input, tensor in step.input_map.items():
            spec = inputs.get(model_input)
            if spec is None:
                fail(step, f"input_map names {model_input!r}, not an input of the model (inputs: {', '.join(inputs)})")
            if tensor in known:
                datatype, dims, origin = known[tensor]
                if datatype != spec.datatype:
                    fail(
                        step,
                        f"input {model_input!r} is {spec.datatype} but tensor {tensor!r} from {origin} is {datatype}",
                    )
                if not _dims_compatible(dims, spec.dims):
                    fail(
                        step,
                        f"input {model_input!r} has dims {list(spec.dims)} but tensor {tensor!r} from {origin} "
                        f"has dims {list(dims)}",
                    )
        unmapped = [n for n in inputs if n not in step.input_map and n not in optional]
        if unmapped:
            fail(step, f"leaves the model's input(s) {', '.join(unmapped)} unmapped; add them to input_map")
        for model_output, tensor in step.output_map.items():
            spec = outputs.get(model_output)
            if spec is None:
                fail(
                    step,
                    f"output_map names {model_output!r}, not an output of the model (outputs: {', '.join(outputs)})",
                )
            known[tensor] = (spec.datatype, tuple(spec.dims), f"step {step.index} ({step.model_name!r})")
            if tensor in declared_outputs:
                datatype, dims = declared_outputs[tensor]
                if datatype != spec.datatype or not _dims_compatible(dims, spec.dims):
                    fail(
                        step,
                        f"output {model_output!r} ({spec.datatype} {list(spec.dims)}) does not match the ensemble "
                        f"output {tensor!r} ({datatype} {dims and list(dims)})",
                    )


# --------------------------------------------------------------------------------------------
# Loading: definition, served model, load order
# --------------------------------------------------------------------------------------------


def prepare_ensemble(
    location: ModelLocation, config: ModelConfig, source: str, selected: list[int], missing: dict[int, str]
) -> ModelDefinition:
    """The definition of an ensemble directory: config completed as Triton does (name, no backend,
    no instance groups), validated, its step graph checked.

    Raises: ModelConfigError naming ``source``.
    """
    from shipyard.serving_runtime.config import new_config, validate_config
    from shipyard.serving_runtime.repository import ModelDefinition

    completed = new_config()
    completed.CopyFrom(config)
    if not completed.name:
        completed.name = location.name
    completed.backend = ""
    if not completed.HasField("version_policy"):
        completed.version_policy.latest.num_versions = 1
    completed.model_transaction_policy.decoupled = False  # presence: Triton reports the field
    if completed.instance_group:
        raise ModelConfigError(f"{source}: an ensemble has no instances of its own; remove instance_group")
    if completed.WhichOneof("scheduling_choice") not in (None, "ensemble_scheduling"):
        raise ModelConfigError(
            f"{source}: an ensemble is scheduled by ensemble_scheduling only; remove "
            f"{completed.WhichOneof('scheduling_choice')} (its composing models batch)"
        )
    validate_config(completed, name=location.name, source=source)
    plan_ensemble(completed, source)
    return ModelDefinition(location.name, location.path, completed, ENSEMBLE_BACKEND, source, selected, missing)


def load_ensemble(definition: ModelDefinition, version: int, resolve: Resolver) -> ServedModel:
    """A served ensemble version, checked against its loaded composing models.

    Call on the event loop thread (after the composing models have loaded).

    Raises: ModelConfigError naming the step that does not fit its composing model.
    """
    from shipyard.serving_runtime.model import ServedModel

    plan = plan_ensemble(definition.config, definition.source)
    check_steps(plan, definition.config, resolve, definition.source)
    scheduler = EnsembleScheduler(plan, resolve, version)
    return ServedModel(
        definition.name, version, definition.config, (), model_dir=definition.model_dir, scheduler=scheduler
    )


def composing_models(config: ModelConfig) -> list[str]:
    """The models an ensemble config's steps name (empty for other models)."""
    if not is_ensemble(config):
        return []
    return list(dict.fromkeys(str(step.model_name) for step in config.ensemble_scheduling.step))


def _peek_dependencies(location: ModelLocation) -> list[str] | None:
    """The composing models of the model at ``location`` when it is an ensemble, else None (also
    when its config cannot be read: loading it reports that)."""
    from shipyard.serving_runtime.config import CONFIG_FILENAME, load_config

    path = location.path / CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        config = load_config(path)
    except ServingError:
        return None
    return composing_models(config) if is_ensemble(config) else None


def load_waves(names: Sequence[str], scan: RepositoryScan) -> list[list[str]]:
    """``names`` in groups to load one after another: plain models first, then each ensemble
    after the models (and ensembles) it composes. Models in a group load concurrently."""
    deps: dict[str, list[str]] = {}
    for name in names:
        location = scan.models.get(name)
        found = _peek_dependencies(location) if location is not None else None
        if found is not None:
            deps[name] = found
    waves = [[n for n in names if n not in deps]]
    placed = set(waves[0])
    left = [n for n in names if n in deps]
    while left:
        wave = [n for n in left if all(d in placed or d not in deps for d in deps[n])]
        if not wave:  # a cycle between ensembles: load them anyway; their checks report it
            wave = left
        waves.append(wave)
        placed.update(wave)
        left = [n for n in left if n not in placed]
    return [wave for wave in waves if wave]


def dependencies_to_load(
    name: str, scan: RepositoryScan, is_loaded: Callable[[str], bool], override: ModelConfig | None = None
) -> list[list[str]]:
    """The composing models (of nested ensembles too) that loading ``name`` needs and that are not
    loaded, in waves to load one after another (explicit mode loads them first, as Triton does).
    Empty when ``name`` is not an ensemble. Models missing from the repositories are left to the
    ensemble's own checks, which name them."""
    if override is not None:
        found = composing_models(override) if is_ensemble(override) else None
    else:
        location = scan.models.get(name)
        found = _peek_dependencies(location) if location is not None else None
    if not found:
        return []
    seen = {name}
    needed: list[str] = []

    def visit(dependencies: Sequence[str]) -> None:
        for dependency in dependencies:
            location = scan.models.get(dependency)
            if dependency in seen or location is None:
                continue
            seen.add(dependency)
            nested = _peek_dependencies(location)
            if nested:
                visit(nested)
            if not is_loaded(dependency):
                needed.append(dependency)

    visit(found)
    return load_waves(needed, scan)
