"""Errors of the pipeline steps. All are user-facing: the message names the bad value and the fix.

The CLI maps ``ComponentError`` (and registry errors) to exit code 2 (a user error); anything else
is an internal error (exit code 1).
"""

from __future__ import annotations

from typing import Any


class ComponentError(Exception):
    """Base class for a step that cannot do what was asked."""

    exit_code = 2


class ExportError(ComponentError):
    """torch -> ONNX failed, the ONNX checker rejected the file, or outputs differ from torch."""


class TargetUnavailable(ComponentError):
    """The optimization target cannot run here (e.g. ``tensorrt`` without TensorRT or a GPU)."""


class OptimizeError(ComponentError):
    """An optimization (graph optimization, quantization, FP16, engine build) failed."""


class ValidationFailed(ComponentError):
    """The parity gate failed; ``report`` holds the numbers and ``text`` the readable report."""

    def __init__(self, text: str, report: Any = None) -> None:
        super().__init__(text)
        self.text = text
        self.report = report


class PublishError(ComponentError):
    """The model could not be written into the repository (nothing partial is left behind)."""
