"""Triton ``config.pbtxt``: parsed and written with the real protobuf schema.

The schema is tritonclient's ``model_config_pb2`` (``inference.ModelConfig``). This module is
the one definition of the config format: the runtime reads through it and
``components/publish`` writes through it.

Note: tritonclient's gRPC protos and kserve's share the ``inference`` proto package, so a
process must never import both ``tritonclient.grpc`` and ``kserve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import text_format

from shipyard.serving_runtime.errors import ModelConfigError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

CONFIG_FILENAME = "config.pbtxt"


def new_config() -> ModelConfig:
    """An empty ``ModelConfig`` message."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelConfig()


def parse_config_text(text: str, source: str = CONFIG_FILENAME) -> ModelConfig:
    """Parse config text; errors name ``source`` and the line and column.

    Raises: ModelConfigError("<source>:<line>:<col>: <what is wrong>").
    """
    config = new_config()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        detail = str(exc)
        prefix = f"{line}:{column} : "
        if detail.startswith(prefix):
            detail = detail[len(prefix) :]
        raise ModelConfigError(f"{source}:{line}:{column}: {detail}") from None
    return config


def load_config(path: Path) -> ModelConfig:
    """Read and parse a ``config.pbtxt`` file.

    Raises: ModelConfigError naming the file (unreadable, not UTF-8, or a parse error with line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot read model config: {exc}") from None
    return parse_config_text(text, str(path))


def render_config(config: ModelConfig) -> str:
    """The text form Triton writes (``config.pbtxt``)."""
    return str(text_format.MessageToString(config))
