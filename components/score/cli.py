"""``shipyard score``: a thin CLI over ``shipyard.components.score.score`` (``register_commands(app)``).

Prints the summary as JSON on stdout, progress and errors on stderr. Exit codes: 0 done; 2 a user error
(missing file, bad URI, unknown model, a server that keeps refusing) in one line; 1 an internal error.
"""

from __future__ import annotations

import json
import sys

import typer

DEFAULT_SERVED_NICE = 10  # shipyard score --url lowers itself to this nice value unless --nice says otherwise


def register_commands(app: typer.Typer) -> None:
    """Add ``score`` to ``app``."""

    @app.command("score")
    def score_cmd(
        input_uri: str = typer.Argument(..., metavar="INPUT", help="Data set: .parquet, .csv or .npz; a local "
                                        "path or an fsspec URL (s3://, gs://, file://...)."),
        output: str = typer.Option(..., "--output", "-o", help="Output directory (local or fsspec URL): Parquet "
                                   "part files + _manifest.json. Rerun the same command to resume."),
        model: str = typer.Option(..., "--model", "-m", help="Model name (as served / as in the repository), or "
                                  "models:/NAME@ALIAS|VERSION: its published version (in this process from its "
                                  "repository unless --url or --repository)."),
        url: str = typer.Option(None, "--url", help="Served model: gRPC host:port, or an InferenceService URL "
                                "http(s)://host (its gRPC port)."),
        repository: str = typer.Option(None, "--repository", help="Model repository: score in this process with "
                                       "the runtime's backends (no server)."),
        model_version: int = typer.Option(None, "--model-version", help="Pin a version (default: the newest; "
                                          "a resumed run keeps the version it started with)."),
        key: str = typer.Option(None, "--key", help="Column (or .npz array) copied next to the predictions "
                                "(default: the row number, column 'row')."),
        fmt: str = typer.Option(None, "--format", help="parquet, csv or npz (default: from the suffix)."),
        batch_size: int = typer.Option(None, "--batch-size", help="Rows per request (default: the model's "
                                       "largest preferred_batch_size, else max_batch_size; at most its "
                                       "background_share_rows lets rows join real-time batches)."),
        max_inflight: int = typer.Option(None, "--max-inflight", help="Requests in flight at most (default: "
                                         "enough to fill max_batch_size, at least 4)."),
        part_rows: int = typer.Option(None, "--part-rows", help="Rows per output part file (default ~8192)."),
        priority: int = typer.Option(None, "--priority", help="Request priority level (default: the lowest "
                                     "level of the model's dynamic_batching, so real-time requests go first)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start over instead of resuming."),
        patience_s: float = typer.Option(300.0, "--patience-s", help="Seconds a request may keep being refused "
                                         "(UNAVAILABLE, queue full) before the run fails."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
        tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI for models:/ URIs."),
        nice: int = typer.Option(None, "--nice", help="Run this process at this nice value (0-19; default 10 with "
                                 "--url: a batch job's client yields the CPU it may share with the server and its "
                                 "real-time clients; 0 in this process). Never raises priority."),
    ) -> None:  # fmt: skip
        """Score a data set with a served model (or in this process) into resumable Parquet output."""
        from shipyard.components.score import ScoreError, score
        from shipyard.components.score.cpu_priority import MAX_NICE, lower_process

        if nice is None:
            nice = DEFAULT_SERVED_NICE if url else 0
        if not 0 <= nice <= MAX_NICE:
            print(f"error: --nice must be 0-{MAX_NICE}, got {nice}", file=sys.stderr)
            raise typer.Exit(2)
        applied = lower_process(nice) if nice else None

        try:
            summary = score(input_uri, output, model, url=url, repository=repository, model_version=model_version,
                            fmt=fmt, key=key, batch_size=batch_size, max_inflight=max_inflight, part_rows=part_rows,
                            priority=priority, overwrite=overwrite, patience_s=patience_s,
                            show_progress=not quiet, tracking_uri=tracking_uri)  # fmt: skip
        except ScoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        print(f"scored {summary['rows_scored']:,} rows ({summary['rows_resumed']:,} resumed) in "
              f"{summary['seconds']:.1f} s -> {summary['output']}", file=sys.stderr)  # fmt: skip
        if applied is not None:
            summary["nice"] = applied
        print(json.dumps(summary, indent=2))
