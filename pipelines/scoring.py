"""The batch scoring pipeline (KFP v2): score a data set with ``models:/NAME@champion`` and log the
output's location and row count to MLflow.

score:  registry URI -> its published version (lineage) -> scored on a server (``url``) or in the
        pipeline's pod from the repository it was published to -> Parquet parts + manifest in ``output_uri``
log:    an MLflow run in ``experiment``: the output location (tag and param), rows (metric), the summary

The components are thin: each body imports inside and calls ``shipyard.components.score``.
A rerun of the same pipeline with the same ``output_uri`` resumes a scoring step that was preempted.
(No ``from __future__ import annotations``: KFP reads the annotations at decoration time.)
"""

from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Output

from shipyard.pipelines.kfp_components import PIPELINE_IMAGE

SCORE_PIPELINE_NAME = "shipyard-score"


@dsl.component(base_image=PIPELINE_IMAGE)
def score_dataset(
    model_uri: str,
    tracking_uri: str,
    input_uri: str,
    output_uri: str,
    url: str,
    repository: str,
    key: str,
    batch_size: int,
    metrics: Output[Metrics],
) -> NamedTuple("Scored", output_uri=str, rows=int, summary=str):  # type: ignore[valid-type]
    """Score ``input_uri`` with ``model_uri`` (served at ``url``, else in this pod) into ``output_uri``.

    Low priority on a shared server; resumes an output a preempted run left. A user error exits 2.
    """
    import json
    from collections import namedtuple

    from shipyard.components.score import ScoreError, score

    try:
        summary = score(input_uri, output_uri, model_uri, url=url or None, repository=repository or None,
                        key=key or None, batch_size=batch_size or None, tracking_uri=tracking_uri or None,
                        show_progress=True)  # fmt: skip
    except ScoreError as exc:
        print(f"error: {exc}")
        raise SystemExit(2) from None
    for name in ("rows", "rows_scored", "rows_resumed", "rows_per_s", "retries"):
        if isinstance(summary.get(name), (int, float)):
            metrics.log_metric(name, float(summary[name]))
    print(json.dumps(summary, indent=2))
    scored = namedtuple("Scored", ["output_uri", "rows", "summary"])  # type: ignore[name-match]
    return scored(str(summary["output"]), int(summary["rows"]), json.dumps(summary))


@dsl.component(base_image=PIPELINE_IMAGE)
def log_scoring_run(summary: str, model_uri: str, tracking_uri: str, experiment: str) -> str:
    """Log the scoring run to MLflow (output location, row count, throughput); returns the run id."""
    import json

    from shipyard.components.score.registry_link import log_scoring

    data = json.loads(summary)
    run_id = log_scoring(data, data.get("model_uri", model_uri), tracking_uri or None, experiment)
    print(f"logged scoring run {run_id}: {data['rows']} rows -> {data['output']}")
    return run_id


def make_score_pipeline(gpu: bool = False, cluster: bool = False) -> Any:
    """The scoring pipeline: a registry URI and a data set in, the output location out.

    ``cluster=True`` (compile and submit) gives every task the credentials Secrets (``pipelines/cluster.py``).
    """

    @dsl.pipeline(name=SCORE_PIPELINE_NAME, description="Score a data set with a registered model (low priority "
                  "on a shared server, resumable) and log the output to MLflow.")  # fmt: skip
    def score_pipeline(
        input_uri: str,
        output_uri: str,
        model_uri: str = "models:/model@champion",
        tracking_uri: str = "",
        url: str = "",
        repository: str = "",
        key: str = "",
        batch_size: int = 0,
        experiment: str = "shipyard-scoring",
    ) -> str:
        scored = score_dataset(model_uri=model_uri, tracking_uri=tracking_uri, input_uri=input_uri,
                               output_uri=output_uri, url=url, repository=repository, key=key,
                               batch_size=batch_size).set_display_name("score")  # fmt: skip
        if gpu:
            scored.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        log_scoring_run(summary=scored.outputs["summary"], model_uri=model_uri, tracking_uri=tracking_uri,
                        experiment=experiment).set_display_name("log to MLflow")  # fmt: skip
        if cluster:
            from shipyard.pipelines.cluster import use_cluster_secrets

            use_cluster_secrets()
        return scored.outputs["output_uri"]  # type: ignore[no-any-return]

    return score_pipeline
