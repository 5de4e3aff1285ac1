"""The output directory of a scoring run: numbered Parquet part files and a manifest; resumable.

Layout (a local path or any fsspec URL)::

    <output>/_manifest.json          what is being scored (input fingerprint, model, part size, key), status
    <output>/part-000000.parquet     rows [0, part_rows) of the input: the key column, then the predictions
    <output>/part-000001.parquet     ...

Part ``i`` always holds the rows ``[i * part_rows, (i + 1) * part_rows)`` of the input. It is written under
a dot-prefixed temporary name and moved into place (a rename on a local disk; on an object store the
final object appears whole when it is written), so a part file that exists is complete. A resumed run
scores only the parts whose file is missing: no row is scored twice into the output and none is lost,
wherever the previous run was killed. Readers (``pyarrow.dataset``, Spark, pandas) skip ``_`` and ``.``
files, so the directory reads as one table.

Public: ``OutputStore(uri)``, ``.manifest()``, ``.begin(header, overwrite) -> set[int]``,
``.write_part(index, table)``, ``.finish(summary)``, ``.rows()``; ``MANIFEST``, ``part_name(i)``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from shipyard.components.score.dataset import url_to_fs
from shipyard.components.score.errors import ScoreError

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = 1
_PART = re.compile(r"^part-(\d{6,})\.parquet$")
# manifest fields a resumed run must agree with (anything else may change between runs)
RESUME_FIELDS = ("input", "part_rows", "key", "model")


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def dictionary_columns(table: Any) -> list[str]:
    """The columns worth Parquet's dictionary encoding: not the key (distinct in every row) and not floating
    point predictions (scores rarely repeat: dictionary-encoding 512 floats per row cost 5x the plain write's
    CPU and made the file 1.6x larger); integer or string outputs (class labels) keep it."""
    import pyarrow as pa

    chosen = []
    for index, field in enumerate(table.schema):
        kind = field.type
        while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            kind = kind.value_type
        if index > 0 and not pa.types.is_floating(kind):
            chosen.append(field.name)
    return chosen


class OutputStore:
    """One output directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, root = url_to_fs(uri, "output")
        self.root = root.rstrip("/") or root

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _names(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]

    def done_parts(self) -> set[int]:
        """Indexes of the part files present (each one complete)."""
        return {int(m.group(1)) for name in self._names() if (m := _PART.match(name))}

    def manifest(self) -> dict[str, Any] | None:
        """The manifest of an earlier run, or None.

        Raises: ScoreError when it exists but cannot be read.
        """
        path = self._path(MANIFEST)
        if not self.fs.exists(path):
            return None
        try:
            with self.fs.open(path, "rb") as fh:
                data = json.loads(fh.read())
        except (OSError, ValueError) as exc:
            raise ScoreError(f"{self.uri}/{MANIFEST} is unreadable ({exc}); use --overwrite to start over") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ScoreError(f"{self.uri}/{MANIFEST} is not a shipyard score manifest; use another --output")
        return data

    def begin(self, header: Mapping[str, Any], overwrite: bool = False) -> set[int]:
        """Start or resume: the parts already done. Writes the manifest (status ``running``).

        Raises: ScoreError when the directory holds another run's output (other input, model, part size
        or key) or files that are not ours, unless ``overwrite``.
        """
        previous = self.manifest()
        if overwrite:
            self._clear()
            previous = None
        elif previous is not None:
            changed = [f for f in RESUME_FIELDS if previous.get(f) != header.get(f)]
            if changed:
                detail = "; ".join(f"{f}: was {previous.get(f)}, now {header.get(f)}" for f in changed)
                raise ScoreError(
                    f"{self.uri} holds the output of a different scoring run ({detail}); use another --output, "
                    "or --overwrite to start over"
                )
        elif self.done_parts():
            raise ScoreError(f"{self.uri} has part files but no {MANIFEST}; use another --output or --overwrite")
        self._remove_temporaries()
        self.fs.makedirs(self.root, exist_ok=True)
        self._write_manifest({**header, "format": MANIFEST_FORMAT, "status": "running"})
        return self.done_parts()

    def write_part(self, index: int, table: Any) -> None:
        """Write part ``index`` whole: a temporary name first, then moved into place."""
        import pyarrow.parquet as pq

        final = self._path(part_name(index))
        temporary = self._path(f".{part_name(index)}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open(temporary, "wb") as fh:
            pq.write_table(table, fh, use_dictionary=dictionary_columns(table))
        self.fs.mv(temporary, final)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Mark the run complete in the manifest (with its summary)."""
        current = self.manifest() or {}
        self._write_manifest({**current, "status": "complete", "summary": dict(summary)})

    def rows(self) -> int:
        """Rows in the part files (from their Parquet footers)."""
        import pyarrow.parquet as pq

        total = 0
        for index in sorted(self.done_parts()):
            with self.fs.open(self._path(part_name(index)), "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def _write_manifest(self, data: Mapping[str, Any]) -> None:
        temporary = self._path(f".{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open(temporary, "wb") as fh:
            fh.write(json.dumps(data, indent=2, default=str).encode())
        self.fs.mv(temporary, self._path(MANIFEST))

    def _remove_temporaries(self) -> None:
        for name in self._names():
            if name.startswith(".part-") or name.startswith(f".{MANIFEST}.tmp-"):
                self.fs.rm(self._path(name))

    def _clear(self) -> None:
        for name in self._names():
            if _PART.match(name) or name == MANIFEST:
                self.fs.rm(self._path(name))
