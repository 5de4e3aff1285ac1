"""Score a data set with a model: the library function behind ``shipyard score`` and its KFP component.

Public: ``score(input_uri, output_uri, model, *, url=None, repository=None, ...) -> dict`` (the summary),
``DEFAULT_PART_ROWS``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from shipyard.components.score.dataset import Dataset, open_dataset
from shipyard.components.score.errors import ScoreError
from shipyard.components.score.output import OutputStore
from shipyard.components.score.progress import ScoreProgress
from shipyard.components.score.registry_link import resolve_published
from shipyard.components.score.runner import Settings, Stats, run_parts
from shipyard.components.score.targets import GrpcTarget, InProcessTarget, Target

DEFAULT_PART_ROWS = 8192


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _connect(
    url: str | None, repository: str | None, model: str, version: int | None, patience_s: float
) -> Target:
    if bool(url) == bool(repository):
        raise ScoreError("name exactly one of --url (a served model) or --repository (score in this process)")
    if url:
        return await GrpcTarget.connect(url, model, version, patience_s=min(patience_s, 30.0))
    return await asyncio.to_thread(InProcessTarget.load, str(repository), model, version)


def _part_rows(requested: int | None, previous: dict[str, Any] | None, batch_size: int) -> int:
    if requested:
        return requested
    if previous and isinstance(previous.get("part_rows"), int):
        return int(previous["part_rows"])  # a resumed run keeps the parts it started with
    return max(DEFAULT_PART_ROWS // batch_size, 1) * batch_size


def _header(dataset: Dataset, target: Target, part_rows: int, key: str | None) -> dict[str, Any]:
    return {
        "input": {"uri": dataset.uri, "format": dataset.format, **dataset.fingerprint},
        "part_rows": part_rows,
        "key": key,
        "model": {"name": target.info.name, "version": target.info.version},
        "outputs": [t.name for t in target.info.outputs],
        "rows_estimate": dataset.total_rows,
    }


def _summary(output_uri: str, target: Target, settings: Settings, stats: Stats, store: OutputStore) -> dict[str, Any]:
    seconds = stats.seconds
    return {
        "output": output_uri,
        "rows": store.rows(),
        "rows_scored": stats.rows_scored,
        "rows_resumed": stats.rows_resumed,
        "parts_written": stats.parts_written,
        "seconds": round(seconds, 3),
        "rows_per_s": round(stats.rows_scored / seconds, 1) if seconds > 0 else None,
        "requests": stats.requests,
        "retries": stats.retries,
        "model": target.info.name,
        "model_version": target.info.version,
        "target": target.description,
        "batch_size": settings.batch_size,
        "max_inflight": settings.max_inflight,
        "priority": settings.priority,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


async def _score(
    input_uri: str, output_uri: str, model: str, *, url: str | None, repository: str | None,
    model_version: int | None, fmt: str | None, key: str | None, batch_size: int | None, max_inflight: int | None,
    part_rows: int | None, priority: int | None, overwrite: bool, patience_s: float, show_progress: bool,
    tracking_uri: str | None,
) -> dict[str, Any]:  # fmt: skip
    registered = None
    if model.startswith("models:/"):
        registered = await asyncio.to_thread(resolve_published, model, tracking_uri)
        model, model_version = registered.name, model_version or registered.version
        if not url and not repository:
            repository = registered.repository  # score in this process from where it was published
    dataset = await asyncio.to_thread(open_dataset, input_uri, fmt)
    store = OutputStore(output_uri)
    previous = None if overwrite else store.manifest()
    if model_version is None and previous and previous.get("model", {}).get("name") == model:
        model_version = previous["model"].get("version")  # resume on the version the output was started with
    target = await _connect(url, repository, model, model_version, patience_s)
    try:
        info = target.info
        if priority is None:
            priority = info.lowest_priority
            if not priority and url:
                _note(
                    f"note: model {info.name!r} has no priority levels, so batch requests queue with real-time ones; "
                    "publish it with dynamic_batching priority_levels 2 to keep real-time traffic first"
                )
        batch = batch_size or info.default_batch_size
        if batch > info.max_batch_size:
            raise ScoreError(
                f"--batch-size {batch} is above the max_batch_size of model {info.name!r}: {info.max_batch_size}"
            )
        inflight = max_inflight if max_inflight is not None else info.default_max_inflight(batch)
        settings = Settings(batch, inflight, _part_rows(part_rows, previous, batch), priority, key, patience_s)
        done = await asyncio.to_thread(store.begin, _header(dataset, target, settings.part_rows, key), overwrite)
        if done:
            _note(f"resuming {output_uri}: {len(done)} part(s) already written")
        with ScoreProgress(dataset.total_rows, enabled=show_progress) as progress:
            stats = await run_parts(dataset, target, store, settings, done, progress.advance)
        summary = await asyncio.to_thread(_summary, output_uri, target, settings, stats, store)
        if registered is not None:
            summary["model_uri"] = registered.model_uri
        await asyncio.to_thread(store.finish, summary)
        return summary
    finally:
        await target.close()


def score(
    input_uri: str, output_uri: str, model: str, *, url: str | None = None, repository: str | None = None,
    model_version: int | None = None, fmt: str | None = None, key: str | None = None, batch_size: int | None = None,
    max_inflight: int | None = None, part_rows: int | None = None, priority: int | None = None,
    overwrite: bool = False, patience_s: float = 300.0, show_progress: bool = True, tracking_uri: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Score ``input_uri`` with ``model`` and write the predictions to ``output_uri``; returns the summary.

    The model is served at ``url`` (gRPC ``host:port`` or an InferenceService URL) or loaded from the model
    repository ``repository`` into this process. Batch requests carry ``priority`` (default: the lowest
    level of the model's ``dynamic_batching``) and hold ``batch_size`` rows (default: the model's largest
    preferred batch size, else its ``max_batch_size``);
    ``max_inflight`` requests at most are in flight (default: enough to fill ``max_batch_size``, at least 4).
    An output started earlier is resumed: only its missing parts are scored. ``model`` may be a registry URI
    (``models:/NAME@champion``): its published name and version are scored, in this process from the
    repository it was published to unless ``url`` or ``repository`` is given.

    Raises: ScoreError (bad input, output, model, URL or settings; a server that keeps refusing).
    """
    return asyncio.run(
        _score(input_uri, output_uri, model, url=url, repository=repository, model_version=model_version, fmt=fmt,
               key=key, batch_size=batch_size, max_inflight=max_inflight, part_rows=part_rows, priority=priority,
               overwrite=overwrite, patience_s=patience_s, show_progress=show_progress, tracking_uri=tracking_uri)
    )  # fmt: skip
