"""Publishing into a Triton-layout repository: layout, config, retention, atomicity, object stores, serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shipyard.components.errors import PublishError
from shipyard.components.publish import COMPLETE_MARKER, list_versions, publish
from shipyard.serving_runtime.config import load_config


def _numeric_dirs(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) if model_dir.exists() else []


def test_layout_config_versions_and_retention(tmp_path: Path, digits_onnx: Path) -> None:
    repo = tmp_path / "repo"
    batching = {"max_batch_size": 32, "preferred_batch_size": 16, "max_queue_delay_microseconds": 400}
    results = [
        publish(digits_onnx, repo, "digits", batching=batching, mlflow_model_uri="models:/digits/3", keep_versions=2)
        for _ in range(3)
    ]
    assert [r.version for r in results] == [1, 2, 3] and results[2].removed_versions == (1,)
    assert _numeric_dirs(repo / "digits") == ["2", "3"]
    assert (repo / "digits" / "3" / "model.onnx").read_bytes() == digits_onnx.read_bytes()
    config = load_config(repo / "digits" / "config.pbtxt")  # the runtime's own parser
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert list(config.input[0].dims) == [1, 8, 8] and config.output[0].name == "logits"
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 400
    # real-time requests (no priority) at level 1, batch scoring at level 2
    assert (config.dynamic_batching.priority_levels, config.dynamic_batching.default_priority_level) == (2, 1)
    background = {k: v.string_value for k, v in config.parameters.items() if k.startswith("background_")}
    assert background == {  # 32 / 16, 32 / 8, 32 / 8
        "background_share_rows": "2", "background_slice_rows": "4", "background_fill_rows": "4",
    }  # fmt: skip
    assert config.parameters["mlflow_model_uri"].string_value == "models:/digits/3"
    assert not [p for p in (repo / "digits").iterdir() if p.name.startswith(".")]  # no staging left over
    assert results[2].version_uri == (repo / "digits" / "3").as_uri()
    # file:// URIs work too
    assert publish(digits_onnx, (tmp_path / "repo").as_uri(), "digits", keep_versions=None).version == 4


def test_measured_background_rows_size_the_batch_jobs_slices_and_fill(tmp_path: Path, digits_onnx: Path) -> None:
    """A recommendation that measured the cost curve (``background_rows``) sets slices and fill to it, the
    share at most that; without one the publish step's divisors stay (the test above)."""
    from shipyard.components.validate import BatchingRecommendation

    def background(**batching: object) -> dict[str, str]:
        publish(digits_onnx, tmp_path / "repo", "digits", batching=batching, keep_versions=None)
        config = load_config(tmp_path / "repo" / "digits" / "config.pbtxt")
        return {k.removeprefix("background_"): v.string_value for k, v in config.parameters.items()
                if k.startswith("background_")}  # fmt: skip

    rec = BatchingRecommendation(64, 16, 400, 20.0, "measured", background_rows=2)
    assert background(**rec.as_dict()) == {"share_rows": "2", "slice_rows": "2", "fill_rows": "2"}
    gpu_like = background(max_batch_size=64, background_rows=16)
    assert gpu_like == {"share_rows": "4", "slice_rows": "16", "fill_rows": "16"}
    assert background(max_batch_size=8, background_rows=32) == {"share_rows": "1", "slice_rows": "8", "fill_rows": "8"}


def test_object_store_writes_the_completion_marker_last(digits_onnx: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    first = publish(digits_onnx, "memory://models", "digits", keep_versions=1)
    second = publish(digits_onnx, "memory://models", "digits", keep_versions=1)
    assert (first.version, second.version, second.removed_versions) == (1, 2, (1,))
    assert list_versions("memory://models", "digits") == [2]
    assert fs.exists(f"/models/digits/2/{COMPLETE_MARKER}") and fs.exists("/models/digits/config.pbtxt")
    fs.rm("/models", recursive=True)


def test_errors(tmp_path: Path, digits_onnx: Path) -> None:
    with pytest.raises(PublishError, match="invalid model name"):
        publish(digits_onnx, tmp_path, "../evil")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    with pytest.raises(PublishError, match="--io-model"):
        publish(plan, tmp_path / "repo", "digits")
    config = publish(plan, tmp_path / "repo", "digits", io_model=digits_onnx, max_batch_size=8).config_text
    assert 'platform: "tensorrt_plan"' in config and "KIND_GPU" in config


def test_exception_between_steps_leaves_no_partial_version(
    tmp_path: Path, digits_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shipyard.components.publish import repository

    repo = tmp_path / "repo"
    publish(digits_onnx, repo, "digits")

    def fail(src: Path, dst: Path) -> None:
        dst.write_bytes(src.read_bytes()[:100])
        raise OSError("disk full (injected)")

    monkeypatch.setattr(repository, "_copy_file", fail)
    with pytest.raises(PublishError, match="disk full"):
        publish(digits_onnx, repo, "digits")
    with pytest.raises(PublishError, match="disk full"):
        publish(digits_onnx, repo, "other")  # a brand-new model: not even the model directory appears
    assert _numeric_dirs(repo / "digits") == ["1"] and not (repo / "other").exists()
    assert not [p for p in (repo / "digits").iterdir() if p.name.startswith(".publish")]


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shipyard.components.publish import repository, publish

    def slow_copy(src, dst):
        data = Path(src).read_bytes()
        with open(dst, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            Path(sys.argv[3]).write_text("writing")
            time.sleep(60)  # killed here, halfway through the model file

    repository._copy_file = slow_copy
    publish(sys.argv[1], sys.argv[2], "digits")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True])
def test_killing_publish_midway_leaves_nothing_a_server_would_load(
    tmp_path: Path, digits_onnx: Path, existing: bool
) -> None:
    repo = tmp_path / "repo"
    if existing:
        publish(digits_onnx, repo, "digits")
    flag = tmp_path / "flag"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(digits_onnx), str(repo), str(flag)])
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert child.poll() is None, "publisher exited early"
        assert time.monotonic() < deadline, "publisher never started writing"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert _numeric_dirs(repo / "digits") == (["1"] if existing else [])
    staged = [p for p in (repo / "digits" if existing else repo).iterdir() if p.name.startswith(".publish-")]
    assert staged, "the interrupted write should be in a dot-prefixed staging directory"

    # what a polling server sees: the runtime's own repository scan
    from shipyard.serving_runtime.repository import scan_repositories, version_dirs

    scan = scan_repositories([repo])
    assert (set(scan.models) == {"digits"}) if existing else not scan.models
    if existing:
        assert sorted(version_dirs(repo / "digits")) == [1]
    # the next publish still works and takes the next number
    assert publish(digits_onnx, repo, "digits").version == (2 if existing else 1)


async def test_published_model_is_served_with_the_same_predictions(
    tmp_path: Path, digits_onnx: Path, digits: object
) -> None:
    import onnxruntime as ort

    from shipyard.serving_runtime.manager import ModelManager
    from shipyard.serving_runtime.scheduling.api import InferenceRequest

    repo = tmp_path / "repo"
    batching = {"max_batch_size": 16, "preferred_batch_size": 8, "max_queue_delay_microseconds": 100}
    publish(digits_onnx, repo, "digits", batching=batching, mlflow_model_uri="models:/digits/1")
    manager = ModelManager([repo], control_mode="none", gpu_count=0)
    await manager.start()
    try:
        served = manager.get("digits")
        x = digits.x_test[:16]  # type: ignore[attr-defined]
        got = await served.infer(InferenceRequest(inputs={"input": x}, batch_size=16))
        want = ort.InferenceSession(str(digits_onnx)).run(["logits"], {"input": x})[0]
        np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)
        assert served.config.parameters["mlflow_model_uri"].string_value == "models:/digits/1"
    finally:
        await manager.shutdown()


def test_the_idle_lane_is_opt_in_and_checked(tmp_path: Path, digits_onnx: Path) -> None:
    """``--background-instances`` (opt-in: docs/scoring.md, "The idle lane") writes the lane's parameter into a
    config the runtime's scheduler reads; one that cannot work is refused with one line naming the fix."""
    from shipyard.serving_runtime.scheduling.batching import settings_from_config

    repo = tmp_path / "repo"
    publish(digits_onnx, repo, "digits", max_batch_size=32)
    assert "background_instances" not in load_config(repo / "digits" / "config.pbtxt").parameters  # not by default
    publish(digits_onnx, repo, "digits", max_batch_size=32, instance_count=2, background_instances=1)
    config = load_config(repo / "digits" / "config.pbtxt")
    assert config.instance_group[0].count == 2 and config.parameters["background_instances"].string_value == "1"
    batching, _ = settings_from_config(config, "digits")
    assert batching.background is not None and batching.background.instances == 1
    assert "background_lend" not in config.parameters and batching.background.lend  # lends by default
    publish(digits_onnx, repo, "digits", max_batch_size=32, instance_count=2, background_instances=1,
            background_lend=False)  # fmt: skip
    config = load_config(repo / "digits" / "config.pbtxt")
    assert config.parameters["background_lend"].string_value == "0"
    batching, _ = settings_from_config(config, "digits")
    assert batching.background is not None and not batching.background.lend
    with pytest.raises(PublishError, match="--no-background-lend needs --background-instances"):
        publish(digits_onnx, repo, "digits", max_batch_size=32, background_lend=False)
    with pytest.raises(PublishError, match="use --instance-count 2 or more"):
        publish(digits_onnx, repo, "digits", max_batch_size=32, background_instances=1)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    with pytest.raises(PublishError, match="needs CPU instances"):
        publish(plan, repo, "plan", io_model=digits_onnx, max_batch_size=8, instance_count=2, background_instances=1)
