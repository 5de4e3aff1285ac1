"""Build the venv of the benchmark's ``shipyard-pip`` target: shipyard as a user gets it from pip.

    python -m benchmarks.pip_venv VENV    (then: python -m benchmarks.run --shipyard-python VENV/bin/python)

The sdist comes from ``python -m build --sdist`` of this checkout, and ``pip install --no-deps
--no-build-isolation "shipyard[serve] @ file://SDIST"`` installs it into a fresh ``VENV`` (its setup.py
compiles the native gRPC frontend when g++ and gRPC C++ are found, and says so). The dependencies are
this environment's, seen through a .pth file, so nothing is downloaded; the package itself, its
extension included, comes only from the sdist (as in tests/serving_runtime/test_pip_install.py).
An existing ``VENV`` is replaced. Exit code 0 when the server in ``VENV`` has the native frontend,
1 when the install failed or built without it (pip's output says why), 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

from benchmarks.common import REPO_ROOT

NATIVE_CHECK = "from shipyard.serving_runtime.protocol.native_grpc import unavailable_reason as u; print(u() or 'ok')"


def build_sdist(out: Path) -> Path:
    """This checkout's sdist in ``out``. Raises: subprocess.CalledProcessError with build's output."""
    command = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check"]
    subprocess.run([*command, "-o", str(out), str(REPO_ROOT)], check=True, capture_output=True, text=True, timeout=300)
    (sdist,) = out.glob("shipyard-*.tar.gz")
    return sdist


def install(where: Path, sdist: Path) -> Path:
    """A fresh venv at ``where`` with ``shipyard[serve]`` from ``sdist``; returns its python.

    Raises: subprocess.CalledProcessError (pip's output in it) when pip fails.
    """
    shutil.rmtree(where, ignore_errors=True)
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    base = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(purelib) / "_deps_from_bench_env.pth").write_text("\n".join(dict.fromkeys([*ours, *base])) + "\n")
    pip = [str(python), "-m", "pip", "install", "-v", "--no-deps"]  # pip seen through the .pth
    pip += ["--no-build-isolation", "--no-cache-dir", f"shipyard[serve] @ {sdist.as_uri()}"]
    result = subprocess.run(pip, capture_output=True, text=True, timeout=600, cwd=where, check=False)
    for line in (result.stdout + result.stderr).splitlines():
        if "shipyard: " in line:
            print(line.strip(), flush=True)
    result.check_returncode()
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pip_venv", description=__doc__)
    parser.add_argument("venv", type=Path, help="where to create the venv (replaced when it exists)")
    args = parser.parse_args(argv)
    if args.venv.resolve() in (REPO_ROOT, Path(sys.prefix).resolve()):
        parser.error(f"{args.venv} is this checkout or the running environment; name a new folder")
    with tempfile.TemporaryDirectory(prefix="shipyard-sdist-") as tmp:
        try:
            sdist = build_sdist(Path(tmp))
            python = install(args.venv.resolve(), sdist)
        except subprocess.CalledProcessError as exc:
            print(f"pip_venv: {' '.join(map(str, exc.cmd[:6]))} ... failed:\n{(exc.stdout or '')[-3000:]}")
            print((exc.stderr or "")[-3000:])
            return 1
    check = subprocess.run([python, "-c", NATIVE_CHECK], capture_output=True, text=True, cwd="/", check=False)
    verdict = check.stdout.strip() or check.stderr.strip()[-500:]
    if verdict != "ok":
        print(f"pip_venv: {python} has no native gRPC frontend: {verdict}")
        return 1
    print(
        f"pip_venv: {python} (native gRPC frontend built from {sdist.name}); run the benchmark with "
        f"--shipyard-python {python}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
