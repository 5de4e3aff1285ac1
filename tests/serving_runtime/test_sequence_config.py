"""The sequence batcher's pure parts: settings from config.pbtxt, a request's sequence parameters and
the control tensors the model receives (datatypes, true/false values, shapes with and without a
batch dimension), and the config errors, each naming the model and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import InvalidArgument, ModelConfigError
from shipyard.serving_runtime.scheduling.sequence_config import (
    SequenceSettings,
    control_tensors,
    hidden_tensors,
    sequence_parameters,
    settings_from_config,
)

CONFIG = """
name: "m"
max_batch_size: {mbs}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
sequence_batching {{
  {strategy}
  control_input [
    {{ name: "S" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "E" control [ {{ kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] }} ] }},
    {{ name: "R" control [ {{ kind: CONTROL_SEQUENCE_READY fp32_false_true: [ -1, 2 ] }} ] }},
    {{ name: "C" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
  state [ {{ input_name: "SI" output_name: "SO" data_type: TYPE_INT64 dims: [ 2 ] }} ]
}}
"""


def _settings(
    mbs: int = 4, strategy: str = "direct { }", corrid: str = "TYPE_UINT64", instances: int = 2
) -> SequenceSettings:
    config = parse_config_text(CONFIG.format(mbs=mbs, strategy=strategy, corrid=corrid))
    return settings_from_config(config, instances, None, "model 'm'")


def test_slots_per_strategy_and_hidden_tensors() -> None:
    assert _settings().slots == 8  # direct: max_batch_size per instance
    assert _settings(mbs=0).slots == 2
    assert _settings(strategy="oldest { max_candidate_sequences: 3 }").slots == 3
    config = parse_config_text(CONFIG.format(mbs=4, strategy="", corrid="TYPE_UINT64"))
    assert hidden_tensors(config) == ({"S", "E", "R", "C", "SI"}, {"SO"})
    settings = _settings()
    assert settings.max_idle_us == 1_000_000 and settings.outputs == ("OUT",)
    np.testing.assert_array_equal(settings.states[0].initial, np.zeros(2, dtype=np.int64))


def test_control_tensors_with_a_batch_dimension() -> None:
    tensors = control_tensors(_settings(), [(7, True, False), (9, False, True)])
    assert tensors["S"].dtype == np.int32 and tensors["S"].tolist() == [[1], [0]]
    assert tensors["E"].dtype == np.bool_ and tensors["E"].tolist() == [[False], [True]]
    assert tensors["R"].dtype == np.float32 and tensors["R"].tolist() == [[2.0], [2.0]]
    assert tensors["C"].dtype == np.uint64 and tensors["C"].tolist() == [[7], [9]]


def test_control_tensors_without_batching_and_string_ids() -> None:
    tensors = control_tensors(_settings(mbs=0, corrid="TYPE_STRING"), [("abc", False, False)])
    assert tensors["S"].shape == (1,) and tensors["S"].tolist() == [0]
    assert tensors["C"].tolist() == [b"abc"]
    with pytest.raises(InvalidArgument, match="is a string but the model's CONTROL_SEQUENCE_CORRID 'C' is UINT64"):
        control_tensors(_settings(), [("abc", True, False)])


def test_sequence_parameters() -> None:
    assert sequence_parameters({"sequence_id": 5, "sequence_start": True}, "m") == (5, True, False)
    assert sequence_parameters({"sequence_id": "a", "sequence_end": True}, "m") == ("a", False, True)
    assert sequence_parameters({"sequence_id": -1}, "m")[0] == 2**64 - 1  # a uint64 id sent as int64
    for params in ({}, {"sequence_id": 0}, {"sequence_id": ""}):
        with pytest.raises(InvalidArgument, match="must specify a non-zero or non-empty correlation ID"):
            sequence_parameters(params, "m")
    with pytest.raises(InvalidArgument, match="'sequence_start' must be true or false"):
        sequence_parameters({"sequence_id": 1, "sequence_start": 1}, "m")
    with pytest.raises(InvalidArgument, match="'sequence_id' must be an integer or a string"):
        sequence_parameters({"sequence_id": 1.5}, "m")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("int32_false_true: [ 0, 1 ]", "int32_false_true: [ 1 ]"), "needs two values"),
        (("data_type: TYPE_UINT64", "data_type: TYPE_FP32"), "use TYPE_UINT64"),
        (("int32_false_true: [ 0, 1 ]", ""), "needs fp32_false_true, int32_false_true or bool_false_true"),
    ],
)
def test_config_errors_name_the_model_and_the_fix(edit: tuple[str, str], message: str) -> None:
    text = CONFIG.format(mbs=4, strategy="", corrid="TYPE_UINT64").replace(*edit)
    with pytest.raises(ModelConfigError, match=f"model 'm': .*{message}"):
        settings_from_config(parse_config_text(text), 1, None, "model 'm'")
