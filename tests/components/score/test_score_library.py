"""``shipyard.components.score`` without a server: input formats, the column-to-input rules, the output
store's resume rules, URL parsing, backoff; whole runs in-process on every format (local and fsspec memory://)."""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from score_harness import make_features

from shipyard.components.score import ScoreError, score
from shipyard.components.score.dataset import numpy_to_arrow, open_dataset
from shipyard.components.score.features import ModelInfo, TensorInfo, model_inputs, plan_inputs
from shipyard.components.score.output import MANIFEST, OutputStore, part_name
from shipyard.components.score.runner import backoff_delays
from shipyard.components.score.targets import grpc_address

ROWS = 300


def _expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 2 * x + 1, x.sum(axis=1)


def write_input(fmt: str, path: Path, x: np.ndarray, keys: np.ndarray) -> Path:
    """The same rows in each format: a list column (Parquet), one column per feature (CSV), arrays (.npz)."""
    if fmt == "parquet":
        pq.write_table(pa.table({"id": pa.array(keys), "x": numpy_to_arrow(x)}), path, row_group_size=70)
    elif fmt == "csv":
        columns = {"id": pa.array(keys), **{f"f{i}": pa.array(x[:, i]) for i in range(x.shape[1])}}
        pacsv.write_csv(pa.table(columns), path)
    else:
        np.savez(path, x=x, id=keys)
    return path


def read_output(uri: str, fs: Any = None) -> pa.Table:
    return pads.dataset(uri, format="parquet", filesystem=fs).to_table().sort_by("id")


def check_predictions(table: pa.Table, x: np.ndarray, keys: np.ndarray) -> None:
    assert table.num_rows == len(keys)
    assert table.column("id").to_numpy().tolist() == sorted(keys.tolist())  # every key once
    order = np.argsort(keys)
    y, total = _expected(x[order])
    np.testing.assert_allclose(np.stack(table.column("y").to_numpy(zero_copy_only=False)), y, rtol=1e-6)
    np.testing.assert_allclose(table.column("total").to_numpy(), total, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "npz"])
def test_in_process_scores_every_format(fmt: str, tmp_path: Path, score_repository: Path) -> None:
    x = make_features(ROWS)
    keys = np.arange(1000, 1000 + ROWS)[::-1].copy()
    source = write_input(fmt, tmp_path / f"in.{fmt}", x, keys)
    summary = score(str(source), str(tmp_path / "out"), "affine", repository=str(score_repository), key="id",
                    part_rows=64, show_progress=False)  # fmt: skip
    assert (summary["rows"], summary["rows_scored"], summary["parts_written"]) == (ROWS, ROWS, 5)
    assert summary["batch_size"] == 16 and summary["priority"] == 2  # preferred size; the lowest level
    check_predictions(read_output(str(tmp_path / "out")), x, keys)
    manifest = OutputStore(str(tmp_path / "out")).manifest()
    assert manifest is not None and manifest["status"] == "complete" and manifest["summary"]["rows"] == ROWS


def test_object_store_input_and_output(tmp_path: Path, score_repository: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/score-{uuid.uuid4().hex[:6]}"
    x = make_features(100)
    keys = np.arange(100)
    local = write_input("parquet", tmp_path / "in.parquet", x, keys)
    fs.put(str(local), f"{root}/in.parquet")
    try:
        summary = score(f"memory://{root}/in.parquet", f"memory://{root}/out", "affine", key="id",
                        repository=str(score_repository), part_rows=32, show_progress=False)  # fmt: skip
        assert summary["rows"] == 100
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/out", detail=False)) == [
            MANIFEST, *(part_name(i) for i in range(4))
        ]
        check_predictions(read_output(f"{root}/out", fs), x, keys)
    finally:
        fs.rm(root, recursive=True)


def test_resume_scores_only_missing_parts(tmp_path: Path, score_repository: Path) -> None:
    x = make_features(ROWS)
    keys = np.arange(ROWS)
    source = str(write_input("npz", tmp_path / "in.npz", x, keys))
    out = str(tmp_path / "out")
    score(source, out, "affine", repository=str(score_repository), key="id", part_rows=64, show_progress=False)
    (tmp_path / "out" / part_name(1)).unlink()  # as if killed before writing parts 1 and 4
    (tmp_path / "out" / part_name(4)).unlink()
    (tmp_path / "out" / f".{part_name(4)}.tmp-dead").write_bytes(b"half a file")
    again = score(source, out, "affine", repository=str(score_repository), key="id", show_progress=False)
    assert (again["rows_scored"], again["rows_resumed"], again["rows"]) == (64 + 44, ROWS - 64 - 44, ROWS)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    check_predictions(read_output(out), x, keys)


def test_output_of_another_run_is_refused(tmp_path: Path, score_repository: Path) -> None:
    x = make_features(50)
    first = str(write_input("npz", tmp_path / "a.npz", x, np.arange(50)))
    other = str(write_input("csv", tmp_path / "b.csv", x, np.arange(50)))
    out = str(tmp_path / "out")
    score(first, out, "affine", repository=str(score_repository), key="id", show_progress=False)
    with pytest.raises(ScoreError, match=r"different scoring run .*--overwrite"):
        score(other, out, "affine", repository=str(score_repository), key="id", show_progress=False)
    with pytest.raises(ScoreError, match=r"different scoring run .*part_rows"):
        score(first, out, "affine", repository=str(score_repository), key="id", part_rows=7, show_progress=False)
    summary = score(other, out, "affine", repository=str(score_repository), key="id", overwrite=True,
                    show_progress=False)  # fmt: skip
    assert (summary["rows"], summary["rows_resumed"]) == (50, 0)
    (tmp_path / "out" / MANIFEST).unlink()
    with pytest.raises(ScoreError, match=r"no _manifest\.json"):
        score(other, out, "affine", repository=str(score_repository), key="id", show_progress=False)


def test_errors_name_the_problem(tmp_path: Path, score_repository: Path) -> None:
    source = str(write_input("npz", tmp_path / "in.npz", make_features(10), np.arange(10)))
    repo = str(score_repository)
    cases = [
        (dict(input_uri=str(tmp_path / "missing.parquet")), "not found"),
        (dict(input_uri=str(tmp_path / "data.txt")), "--format"),
        (dict(input_uri="nosuch://b/in.parquet"), "cannot open protocol 'nosuch'"),
        (dict(model="nope"), "model 'nope' is not in repository"),
        (dict(batch_size=64), "above the max_batch_size of model 'affine': 32"),
        (dict(max_inflight=0), "--max-inflight must be positive"),
        (dict(key="nope"), "key column 'nope' is not in the data set"),
        (dict(repository=None), "exactly one of --url"),
    ]
    for overrides, message in cases:
        args: dict[str, Any] = dict(input_uri=source, output_uri=str(tmp_path / "out"), model="affine",
                                    repository=repo, show_progress=False, overwrite=True)  # fmt: skip
        args.update(overrides)
        with pytest.raises(ScoreError, match=message):
            score(**args)


INFO = ModelInfo("m", 1, (TensorInfo("x", "FP32", (2, 2)),), (TensorInfo("y", "FP32", (1,)),), 8)


def test_columns_feed_inputs() -> None:
    by_name = pa.table({"id": [1, 2], "x": numpy_to_arrow(np.arange(8, dtype=np.float64).reshape(2, 4))})
    plan = plan_inputs(INFO, by_name.column_names, "id")
    arrays = model_inputs(by_name, INFO, plan, "id")
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (2, 2, 2) and arrays["x"][1, 1, 1] == 7
    features = pa.table({"id": [1, 2], **{f"c{i}": [i, 10 + i] for i in range(4)}})  # one column per feature
    arrays = model_inputs(features, INFO, plan_inputs(INFO, features.column_names, "id"), "id")
    assert arrays["x"][1].reshape(-1).tolist() == [10, 11, 12, 13]
    with pytest.raises(ScoreError, match=r"needs 4 values per row; the data set's columns but the key .* hold 3"):
        narrow = features.drop_columns(["c3"])
        model_inputs(narrow, INFO, plan_inputs(INFO, narrow.column_names, "id"), "id")
    listed = pa.table({"id": [1, 2], "feats": numpy_to_arrow(np.arange(8).reshape(2, 4))})  # any name, one input
    arrays = model_inputs(listed, INFO, plan_inputs(INFO, listed.column_names, "id"), "id")
    assert arrays["x"][1].reshape(-1).tolist() == [4, 5, 6, 7]
    ragged = pa.table({"x": pa.array([[1.0, 2.0, 3.0, 4.0], [1.0]])})
    with pytest.raises(ScoreError, match=r"column 'x' holds lists of 1\.\.4 values per row; 4 are needed"):
        model_inputs(ragged, INFO, plan_inputs(INFO, ragged.column_names, None), None)
    two = ModelInfo("m", 1, (TensorInfo("a", "FP32", (1,)), TensorInfo("b", "FP32", (1,))), (), 8)
    with pytest.raises(ScoreError, match=r"model input b FP32 \[1\] has no column"):
        plan_inputs(two, ["a", "c"], None)


def test_parquet_parts_are_exact_row_ranges(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"v": np.arange(1000)}), path, row_group_size=97)
    dataset = open_dataset(str(path))
    assert dataset.total_rows == 1000
    parts = list(dataset.parts(128))
    assert [i for i, _ in parts] == list(range(8))
    assert all(t.column("v").to_numpy().tolist() == list(range(i * 128, min(i * 128 + 128, 1000))) for i, t in parts)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("127.0.0.1:8081", ("127.0.0.1:8081", False)),
        ("grpc://h:9000", ("h:9000", False)),
        ("http://sklearn.default.example.com", ("sklearn.default.example.com:80", False)),
        ("https://m.ns.example.com", ("m.ns.example.com:443", True)),
    ],
)
def test_grpc_address(url: str, expected: tuple[str, bool]) -> None:
    assert grpc_address(url) == expected


@pytest.mark.parametrize("url", ["ftp://h:1", "h", "http://h/v2/models/m", "grpc://:80"])
def test_grpc_address_refuses(url: str) -> None:
    with pytest.raises(ScoreError, match="--url"):
        grpc_address(url)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    delays = list(itertools.islice(backoff_delays(0.1, 1.0), 8))
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
    assert all(0.5 <= d <= 1.0 for d in delays[4:])


def test_progress_lines_show_rate_and_eta_off_a_terminal() -> None:
    import io

    from shipyard.components.score.progress import ScoreProgress

    stream = io.StringIO()
    with ScoreProgress(1000, interval_s=0.0, stream=stream) as progress:
        progress.advance(200, scored=False)  # resumed rows count as done, not towards the rate
        time.sleep(0.05)
        progress.advance(300)
    line = stream.getvalue().strip().splitlines()[-1]
    assert line.startswith("scored 500/1,000 rows, ") and " rows/s, ETA 0:0" in line
    assert 300 / 0.5 < progress.rate() < 300 / 0.05 + 1


async def test_feeder_runs_queued_batches_back_to_back_and_answers_each() -> None:
    """The in-process scorer's instance threads (feeder.py): every batch gets its own outputs, an instance's
    error is that batch's answer only, and closing restores the interpreter's switch interval."""
    import asyncio
    import sys
    import threading

    from shipyard.components.score.feeder import Feeder

    class Doubling:
        def __init__(self) -> None:
            self.threads: set[int] = set()

        def execute(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
            self.threads.add(threading.get_ident())
            if (inputs["x"] < 0).any():
                raise RuntimeError("negative input")
            return {"y": inputs["x"] * 2}

    before = sys.getswitchinterval()
    instances = [Doubling(), Doubling()]
    feeder = Feeder(instances, ("y",))
    assert sys.getswitchinterval() < before
    batches = [np.full((3, 2), i, np.float32) for i in range(20)] + [np.full((1, 2), -1, np.float32)]
    results = await asyncio.gather(*(feeder.run({"x": x}) for x in batches), return_exceptions=True)
    for i, result in enumerate(results[:20]):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], np.full((3, 2), 2 * i, np.float32))
    assert isinstance(results[20], RuntimeError) and "negative input" in str(results[20])
    assert threading.get_ident() not in instances[0].threads | instances[1].threads
    feeder.close()
    assert sys.getswitchinterval() == before
