"""The runtime's container carries only the ``serve`` extra: no mlflow, kfp or torch on import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_BLOCKED_IMPORT_CHECK = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = ("mlflow", "kfp", "torch", "kserve", "sklearn", "matplotlib")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"serving_runtime imported {name!r}, which the serve extra does not carry")
            return None

    sys.meta_path.insert(0, Block())
    import shipyard.serving_runtime as runtime

    names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "shipyard.serving_runtime.")]
    for name in names:
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)
    print(len(names), "modules imported")
    """
)


def test_every_runtime_module_imports_without_pipeline_packages() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT_CHECK], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    assert "modules imported" in result.stdout


@pytest.mark.slow
def test_import_in_a_venv_with_only_the_serve_extra(tmp_path: Path) -> None:
    """A real environment built from the ``serve`` extra alone (pip's cache makes this quick)."""
    env_dir = tmp_path / "serve-only"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{ROOT}[serve]"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, importlib.util as u; import shipyard.serving_runtime;"
            "import shipyard.serving_runtime.config as c; c.new_config();"
            "print([m for m in ('mlflow', 'kfp', 'torch') if u.find_spec(m)])",
        ],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "[]", f"serve-only env should not contain {check.stdout.strip()}"
    # from the repository root, the folders there must not shadow the installed package
    from_root = subprocess.run(
        [str(python), "-c", "import shipyard.serving_runtime.server, shipyard; print(shipyard.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=str(ROOT),
    )
    assert from_root.returncode == 0, from_root.stderr
    assert str(env_dir) in from_root.stdout, from_root.stdout
