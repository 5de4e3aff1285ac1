"""Batch scoring: a data set through a served model (or the repository's model in this process) into
resumable Parquet output. The logic behind ``shipyard score`` and its KFP component.

Public: ``score(...)`` (see ``api.score``), ``ScoreError``.
"""

from __future__ import annotations

from shipyard.components.score.api import score
from shipyard.components.score.errors import ScoreError

__all__ = ["ScoreError", "score"]
