"""Check a decoded request against a served model and build the scheduler's ``InferenceRequest``.

Every rejection is an ``InvalidArgument`` (400 / INVALID_ARGUMENT) that names the input and what
the model expects: unknown or duplicate inputs, wrong datatype, wrong shape (``-1`` dims match
any size), a batch above ``max_batch_size``, inputs with different batch sizes, missing inputs,
unknown outputs, bad ``priority``/``timeout`` parameters. Shapes are checked against the config's
client-side ``dims``; config ``reshape`` is applied by the model's instances (``model.py``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shipyard.serving_runtime.datatypes import numpy_to_triton, triton_to_numpy
from shipyard.serving_runtime.errors import BackendError, InvalidArgument
from shipyard.serving_runtime.protocol.types import DecodedRequest, EncodedOutput, ModelLike
from shipyard.serving_runtime.scheduling.api import InferenceRequest

# Request parameters the runtime interprets; the rest pass through to ``InferenceRequest.parameters``.
_RESERVED = frozenset({"priority", "timeout", "binary_data_output"})


@dataclass(frozen=True)
class TensorRule:
    """One config input/output: client-visible ``dims`` (no batch dim); ``optional`` inputs may be left out."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class FastInput:
    """What the fast path checks for one fixed-size input: datatype, numpy dtype, client dims and,
    when no dim is ``-1``, the element count of one item (0 when a dim is variable)."""

    datatype: str
    dtype: np.dtype
    dims: tuple[int, ...]
    item_count: int


@dataclass(frozen=True)
class ModelRules:
    """Everything validation checks, precomputed once per model version.

    ``fast_inputs`` holds the inputs a request can be built for without the general checks
    (fixed-size datatypes); ``required`` names the inputs that are not optional.
    """

    model_name: str
    max_batch_size: int
    inputs: Mapping[str, TensorRule]
    outputs: Mapping[str, TensorRule]
    fast_inputs: Mapping[str, FastInput] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    def expected_shape(self, rule: TensorRule) -> list[int]:
        return [-1, *rule.dims] if self.max_batch_size > 0 else list(rule.dims)


def compile_rules(model: ModelLike) -> ModelRules:
    """Precompute the checks for ``model`` from its tensors and config (``optional`` inputs)."""
    config = getattr(model, "config", None)
    optional = {entry.name for entry in getattr(config, "input", ()) if getattr(entry, "optional", False)}
    inputs = {
        spec.name: TensorRule(spec.name, spec.datatype, tuple(spec.dims), spec.name in optional)
        for spec in model.inputs
    }
    outputs = {spec.name: TensorRule(spec.name, spec.datatype, tuple(spec.dims)) for spec in model.outputs}
    fast: dict[str, FastInput] = {}
    for rule in inputs.values():
        dtype = _fixed_dtype(rule.datatype)
        if dtype is not None:
            count = math.prod(rule.dims) if all(d >= 0 for d in rule.dims) else 0
            fast[rule.name] = FastInput(rule.datatype, dtype, rule.dims, count)
    required = tuple(rule.name for rule in inputs.values() if not rule.optional)
    return ModelRules(model.name, int(model.max_batch_size), inputs, outputs, fast, required)


def _fixed_dtype(datatype: str) -> np.dtype | None:
    """The numpy dtype of a fixed-size datatype; None for BYTES and unknown names."""
    if datatype == "BYTES":
        return None
    try:
        return triton_to_numpy(datatype)
    except InvalidArgument:
        return None


# Rules per live model object (a reloaded version is a new object), keyed by id: the entry is
# dropped when the model object dies, before its id can be reused.
_RULES: dict[int, ModelRules] = {}
# Models that cannot be weakly referenced keep a strong reference here (bounded).
_STRONG: dict[int, tuple[ModelLike, ModelRules]] = {}


def rules_for(model: ModelLike) -> ModelRules:
    """``compile_rules`` cached per model object, for as long as that object lives."""
    rules = _RULES.get(id(model))
    if rules is not None:
        return rules
    entry = _STRONG.get(id(model))
    if entry is not None and entry[0] is model:
        return entry[1]
    rules = compile_rules(model)
    key = id(model)
    try:
        weakref.finalize(model, _RULES.pop, key, None)
    except TypeError:  # not weakly referenceable
        if len(_STRONG) > 256:
            _STRONG.clear()
        _STRONG[key] = (model, rules)
        return rules
    _RULES[key] = rules
    return rules


def shape_matches(shape: Sequence[int], dims: Sequence[int]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def _int_parameter(parameters: Mapping[str, object], key: str) -> int:
    value = parameters.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"request parameter {key!r} must be a non-negative integer, got {value!r}")
    return value


def build_request(model: ModelLike, decoded: DecodedRequest) -> InferenceRequest:
    """Validate ``decoded`` against ``model`` and return the scheduler's request.

    Raises: InvalidArgument naming the input (or output, or parameter) and what was expected.
    """
    rules = rules_for(model)
    mbs = rules.max_batch_size
    where = f"model {rules.model_name!r}"
    inputs: dict[str, np.ndarray] = {}
    batch: int | None = None
    batch_from = ""
    for tensor in decoded.inputs:
        rule = rules.inputs.get(tensor.name)
        if rule is None:
            raise InvalidArgument(
                f"unexpected inference input {tensor.name!r} for {where}; its inputs are: "
                f"{', '.join(rules.inputs) or '(none)'}"
            )
        if tensor.name in inputs:
            raise InvalidArgument(f"input {tensor.name!r} appears more than once in the request")
        if tensor.datatype != rule.datatype:
            raise InvalidArgument(
                f"input {tensor.name!r} of {where} has datatype {tensor.datatype}, expected {rule.datatype}"
            )
        shape = tensor.shape
        expected = rules.expected_shape(rule)
        if mbs > 0:
            if len(shape) != len(rule.dims) + 1:
                raise InvalidArgument(
                    f"unexpected shape for input {tensor.name!r} of {where}: expected {expected} "
                    f"(batch first, max_batch_size {mbs}), got {list(shape)}"
                )
            size = shape[0]
            if size < 1:
                raise InvalidArgument(f"input {tensor.name!r} of {where} has batch size 0; send at least one item")
            if size > mbs:
                raise InvalidArgument(
                    f"input {tensor.name!r} of {where} has batch size {size}, above max_batch_size {mbs}; "
                    f"split the request into batches of at most {mbs}"
                )
            if batch is None:
                batch, batch_from = size, tensor.name
            elif size != batch:
                raise InvalidArgument(
                    f"input {tensor.name!r} has batch size {size} but input {batch_from!r} has {batch}; "
                    "all inputs of a request need the same batch size"
                )
            item_shape = shape[1:]
        else:
            item_shape = shape
        if not shape_matches(item_shape, rule.dims):
            raise InvalidArgument(
                f"unexpected shape for input {tensor.name!r} of {where}: expected {expected}, got {list(shape)}"
            )
        inputs[tensor.name] = tensor.data
    missing = [name for name, rule in rules.inputs.items() if name not in inputs and not rule.optional]
    if missing:
        raise InvalidArgument(
            f"missing input(s) {', '.join(repr(m) for m in missing)} for {where}; expected inputs: "
            + ", ".join(f"{r.name} {r.datatype} {rules.expected_shape(r)}" for r in rules.inputs.values())
        )
    requested: list[str] = []
    for out in decoded.outputs:
        if out.name not in rules.outputs:
            raise InvalidArgument(
                f"unexpected inference output {out.name!r} for {where}; its outputs are: {', '.join(rules.outputs)}"
            )
        if out.name not in requested:
            requested.append(out.name)
    params = decoded.parameters
    return InferenceRequest(
        inputs=inputs,
        outputs=tuple(requested),
        batch_size=batch if batch is not None else 1,
        priority=_int_parameter(params, "priority"),
        timeout_us=_int_parameter(params, "timeout"),
        request_id=decoded.id or "",
        parameters={k: v for k, v in params.items() if k not in _RESERVED},
    )


def collect_outputs(
    model: ModelLike, request: InferenceRequest, results: Mapping[str, np.ndarray]
) -> list[EncodedOutput]:
    """The outputs to send, in the requested order (all of the model's, in config order, when none
    were named).

    Raises: BackendError when the backend did not return a requested output.
    """
    rules = rules_for(model)
    if request.outputs:
        names: Sequence[str] = request.outputs
    else:
        names = [name for name in rules.outputs if name in results] or list(results)
    encoded: list[EncodedOutput] = []
    for name in names:
        if name not in results:
            raise BackendError(f"model {rules.model_name!r} returned no output {name!r}")
        array = np.asarray(results[name])
        encoded.append(EncodedOutput(name, numpy_to_triton(array.dtype), tuple(array.shape), array))
    return encoded
