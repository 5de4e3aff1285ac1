"""Errors of ``shipyard score``. ``ScoreError`` is a user error (exit 2): its message names the problem and the fix."""

from __future__ import annotations

from shipyard.components.errors import ComponentError


class ScoreError(ComponentError):
    """The data set, the output, the model or the server cannot be used as asked."""


class Retryable(Exception):
    """The server refused for now (UNAVAILABLE, queue full, too many calls): back off and send again."""
