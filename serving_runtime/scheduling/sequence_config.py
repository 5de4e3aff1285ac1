"""The sequence batcher's settings from ``sequence_batching`` in config.pbtxt, the sequence
parameters of a request (``sequence_id``, ``sequence_start``, ``sequence_end``), and the control
tensors the model receives (``CONTROL_SEQUENCE_START/_END/_READY/_CORRID``), as Triton builds them.
Pure functions: no event loop, no instances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.serving_runtime.datatypes import config_to_triton, triton_to_numpy
from shipyard.serving_runtime.errors import InvalidArgument, ModelConfigError

DEFAULT_MAX_IDLE_US = 1_000_000  # Triton's default max_sequence_idle_microseconds
BOOL_KINDS = {"CONTROL_SEQUENCE_START": "start", "CONTROL_SEQUENCE_END": "end", "CONTROL_SEQUENCE_READY": "ready"}
CORRID_TYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")

SequenceId = int | str


@dataclass(frozen=True)
class BoolControl:
    """A boolean control input: the model gets ``true``/``false`` in ``datatype``."""

    name: str
    datatype: str
    false: Any
    true: Any


@dataclass(frozen=True)
class StateSpec:
    """Implicit state: ``output_name`` of one step is fed as ``input_name`` of the next."""

    input_name: str
    output_name: str
    datatype: str
    initial: np.ndarray  # one item's initial state (no batch dim)


@dataclass(frozen=True)
class SequenceSettings:
    strategy: str  # "direct" | "oldest"
    max_idle_us: int
    slots: int  # sequences that may hold a slot at once (the rest wait in the backlog)
    batched: bool  # max_batch_size > 0: tensors carry a batch dim
    max_batch: int  # sequences executed together at most
    controls: Mapping[str, BoolControl]  # "start" | "end" | "ready" -> control
    corrid: tuple[str, str] | None  # (input name, datatype)
    states: tuple[StateSpec, ...]
    outputs: tuple[str, ...] = ()  # the config's outputs (what a request without a list gets)
    max_queue_delay_us: int = 0  # oldest: how long ready requests may wait for a fuller batch

    def hidden_inputs(self) -> set[str]:
        names = {c.name for c in self.controls.values()} | {s.input_name for s in self.states}
        return names | ({self.corrid[0]} if self.corrid else set())


def hidden_tensors(config: Any) -> tuple[set[str], set[str]]:
    """The model inputs the server fills (controls, states) and the state outputs, for a config
    with ``sequence_batching`` (empty sets otherwise): they are not the clients' tensors."""
    if not config.HasField("sequence_batching"):
        return set(), set()
    batching = config.sequence_batching
    inputs = {c.name for c in batching.control_input} | {s.input_name for s in batching.state}
    return inputs, {s.output_name for s in batching.state}


def _bool_control(name: str, control: Any, where: str) -> BoolControl:
    for field, datatype in (("fp32_false_true", "FP32"), ("int32_false_true", "INT32"), ("bool_false_true", "BOOL")):
        values = list(getattr(control, field))
        if values:
            if len(values) != 2:
                raise ModelConfigError(f"{where}: control input {name!r} {field} needs two values: [false, true]")
            return BoolControl(name, datatype, values[0], values[1])
    raise ModelConfigError(
        f"{where}: control input {name!r} needs fp32_false_true, int32_false_true or bool_false_true"
    )


def _initial_state(state: Any, datatype: str, model_dir: Path | None, where: str) -> np.ndarray:
    dtype = triton_to_numpy(datatype)
    if not state.initial_state:
        return np.zeros([d if d >= 0 else 1 for d in state.dims], dtype=dtype)
    initial = state.initial_state[0]
    dims = [int(d) for d in initial.dims]
    if any(d < 0 for d in dims):
        raise ModelConfigError(f"{where}: initial_state of state {state.input_name!r} needs fixed dims, got {dims}")
    if initial.WhichOneof("state_data") == "data_file":
        path = (model_dir or Path(".")) / "initial_state" / initial.data_file
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ModelConfigError(f"{where}: cannot read initial_state file {path}: {exc.strerror}") from None
        count = int(np.prod(dims)) if dims else 1
        if len(raw) != count * dtype.itemsize:
            raise ModelConfigError(
                f"{where}: {path} holds {len(raw)} bytes, state dims {dims} need {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(dims).copy()
    return np.zeros(dims, dtype=dtype)


def settings_from_config(config: Any, instances: int, model_dir: Path | None, where: str) -> SequenceSettings:
    """Raises: ModelConfigError naming the model and the bad ``sequence_batching`` field."""
    batching = config.sequence_batching
    strategy = batching.WhichOneof("strategy_choice") or "direct"
    mbs = int(config.max_batch_size)
    per_instance = max(mbs, 1)
    slots = instances * per_instance
    if strategy == "oldest" and batching.oldest.max_candidate_sequences > 0:
        slots = int(batching.oldest.max_candidate_sequences)
    controls: dict[str, BoolControl] = {}
    corrid: tuple[str, str] | None = None
    for entry in batching.control_input:
        for control in entry.control:
            kind = type(control).Kind.Name(control.kind)
            if kind in BOOL_KINDS:
                controls[BOOL_KINDS[kind]] = _bool_control(entry.name, control, where)
            elif kind == "CONTROL_SEQUENCE_CORRID":
                datatype = config_to_triton(int(control.data_type))
                if datatype not in CORRID_TYPES:
                    raise ModelConfigError(
                        f"{where}: CONTROL_SEQUENCE_CORRID {entry.name!r} has data_type {datatype}; "
                        "use TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING"
                    )
                corrid = (entry.name, datatype)
            else:
                raise ModelConfigError(f"{where}: control kind {kind} of {entry.name!r} is not supported")
    states = tuple(
        StateSpec(
            s.input_name,
            s.output_name,
            config_to_triton(int(s.data_type)),
            _initial_state(s, config_to_triton(int(s.data_type)), model_dir, where),
        )
        for s in batching.state
    )
    max_idle = int(batching.max_sequence_idle_microseconds) or DEFAULT_MAX_IDLE_US
    outputs = tuple(t.name for t in config.output)
    delay_us = int(batching.oldest.max_queue_delay_microseconds) if strategy == "oldest" else 0
    return SequenceSettings(
        strategy, max_idle, slots, mbs > 0, per_instance, controls, corrid, states, outputs, delay_us
    )


def _flag(value: object, key: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument(f"request parameter {key!r} must be true or false, got {value!r}")
    return value


def sequence_parameters(parameters: Mapping[str, object], model: str) -> tuple[SequenceId, bool, bool]:
    """(correlation id, start, end) from a request's parameters.

    Raises: InvalidArgument (Triton's words) when the id is missing, zero or empty, or a value has
    the wrong type.
    """
    sequence_id = parameters.get("sequence_id", 0)
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
        raise InvalidArgument(f"request parameter 'sequence_id' must be an integer or a string, got {sequence_id!r}")
    if isinstance(sequence_id, int) and sequence_id < 0:
        sequence_id &= (1 << 64) - 1  # an int64 on the wire carrying a uint64 id
    if sequence_id in (0, ""):
        raise InvalidArgument(
            f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID"
        )
    start = _flag(parameters.get("sequence_start"), "sequence_start")
    end = _flag(parameters.get("sequence_end"), "sequence_end")
    return sequence_id, start, end


def control_tensors(
    settings: SequenceSettings, items: Sequence[tuple[SequenceId, bool, bool]]
) -> dict[str, np.ndarray]:
    """The control inputs for one execution of ``items`` (id, start, end), one row each."""
    lead = (len(items), 1) if settings.batched else (1,)
    tensors: dict[str, np.ndarray] = {}
    for key, control in settings.controls.items():
        dtype = triton_to_numpy(control.datatype)
        values = [
            control.true if key == "ready" or (start if key == "start" else end) else control.false
            for _, start, end in items
        ]
        tensors[control.name] = np.array(values, dtype=dtype).reshape(lead)
    if settings.corrid is not None:
        name, datatype = settings.corrid
        if datatype == "BYTES":
            ids = np.array([str(i).encode() for i, _, _ in items], dtype=np.object_)
        else:
            for sequence_id, _, _ in items:
                if not isinstance(sequence_id, int):
                    raise InvalidArgument(
                        f"sequence_id {sequence_id!r} is a string but the model's CONTROL_SEQUENCE_CORRID "
                        f"{name!r} is {datatype}; send an integer id"
                    )
            ids = np.array([i for i, _, _ in items], dtype=triton_to_numpy(datatype))
        tensors[name] = ids.reshape(lead)
    return tensors
