"""Repository layout: model names, version directories, version policies, fingerprints, duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_builders import scale_model, scale_repo_model, write_config

from shipyard.serving_runtime.config import parse_config_text
from shipyard.serving_runtime.errors import InvalidArgument, ModelConfigError, ModelLoadError
from shipyard.serving_runtime.repository import (
    check_model_name,
    model_fingerprint,
    prepare_model,
    scan_repositories,
    select_versions,
    version_dirs,
)


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", "a\\b", ".hidden", "x\x00y"])
def test_names_that_are_not_plain_directory_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid model name"):
        check_model_name(name)


def test_plain_names_pass() -> None:
    assert check_model_name("resnet-50_v2.onnx") == "resnet-50_v2.onnx"


def test_scan_lists_model_dirs_and_skips_hidden_and_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / ".staging-a").mkdir()
    (tmp_path / "README.md").write_text("not a model")
    scan = scan_repositories([tmp_path])
    assert sorted(scan.models) == ["a", "b"]
    assert scan.duplicates == {}


def test_model_in_two_repositories_is_a_duplicate_with_both_paths(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "m").mkdir(parents=True)
    (two / "m").mkdir(parents=True)
    (two / "other").mkdir()
    scan = scan_repositories([one, two])
    assert "m" not in scan.models and sorted(scan.models) == ["other"]
    reason = scan.duplicate_reason("m")
    assert str(one / "m") in reason and str(two / "m") in reason and "unique" in reason


def test_missing_repository_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="does-not-exist"):
        scan_repositories([tmp_path / "does-not-exist"])


def test_only_numeric_version_dirs_count(tmp_path: Path) -> None:
    for name in ("1", "3", "10", ".4", "latest", "2a"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a directory")
    assert sorted(version_dirs(tmp_path)) == [1, 3, 10]


def _policy(text: str):  # type: ignore[no-untyped-def]
    return parse_config_text(f"version_policy: {text}").version_policy


def test_version_policies() -> None:
    available = [1, 2, 3, 10]
    assert select_versions(None, available) == ([10], [])
    assert select_versions(_policy("{ latest { num_versions: 2 } }"), available) == ([3, 10], [])
    assert select_versions(_policy("{ latest { num_versions: 9 } }"), available) == (available, [])
    assert select_versions(_policy("{ all { } }"), available) == (available, [])
    assert select_versions(_policy("{ specific { versions: [1, 3, 7] } }"), available) == ([1, 3], [7])
    assert select_versions(None, []) == ([], [])


def test_fingerprint_notices_new_version_changed_file_and_config(tmp_path: Path) -> None:
    model_dir = scale_repo_model(tmp_path, "m", {1: 2.0})
    first = model_fingerprint(model_dir)
    assert first == model_fingerprint(model_dir)

    scale_model(model_dir / "2" / "model.onnx", 3.0)
    second = model_fingerprint(model_dir)
    assert second.changed_versions(first) == {2}
    assert second.config == first.config

    write_config(model_dir, (model_dir / "config.pbtxt").read_text() + "\n# edited\n")
    third = model_fingerprint(model_dir)
    assert third.config != second.config and third.changed_versions(second) == set()

    (model_dir / "1" / "model.onnx").write_bytes(b"garbage that is longer than before" * 100)
    assert model_fingerprint(model_dir).changed_versions(third) == {1}


def test_prepare_selects_versions_and_names_the_backend(tmp_path: Path) -> None:
    scale_repo_model(tmp_path, "m", {1: 1.0, 2: 2.0, 3: 3.0}, extra="version_policy: { latest { num_versions: 2 } }")
    definition = prepare_model(scan_repositories([tmp_path]).models["m"], gpu_count=0)
    assert definition.versions == [2, 3]
    assert definition.backend_name == "onnxruntime"
    assert definition.model_file(3) == tmp_path / "m" / "3" / "model.onnx"


def test_default_model_filename_is_honoured(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    scale_model(model_dir / "1" / "scale.onnx", 2.0)
    write_config(model_dir, 'default_model_filename: "scale.onnx"')
    definition = prepare_model(scan_repositories([tmp_path]).models["m"], gpu_count=0)
    assert definition.backend_name == "onnxruntime"
    assert definition.model_file(1).name == "scale.onnx"
    assert [t.name for t in definition.config.input] == ["IN"]


def test_model_without_versions_says_where_to_put_them(tmp_path: Path) -> None:
    write_config(tmp_path / "m", 'platform: "onnxruntime_onnx"')
    with pytest.raises(ModelConfigError, match="no version directories"):
        prepare_model(scan_repositories([tmp_path]).models["m"], gpu_count=0)


def test_config_name_must_match_directory(tmp_path: Path) -> None:
    scale_repo_model(tmp_path, "m", {1: 1.0})
    text = (tmp_path / "m" / "config.pbtxt").read_text().replace('name: "m"', 'name: "other"')
    write_config(tmp_path / "m", text)
    with pytest.raises(ModelConfigError, match=r"config.pbtxt: name 'other' does not match the model directory 'm'"):
        prepare_model(scan_repositories([tmp_path]).models["m"], gpu_count=0)


def test_missing_model_file_without_config_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(ModelConfigError, match="no model file found"):
        prepare_model(scan_repositories([tmp_path]).models["m"], gpu_count=0)
    write_config(tmp_path / "m", 'platform: "onnxruntime_onnx"')
    with pytest.raises(ModelLoadError, match=r"model\.onnx: model file not found"):
        prepare_model(scan_repositories([tmp_path]).models["m"], gpu_count=0)
