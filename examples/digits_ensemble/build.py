"""Build the digits pipeline repository: image bytes -> preprocess (Python) -> digits CNN (ONNX)
-> postprocess (Python) -> top-3 labels, joined by the ensemble ``digits``.

    python examples/digits_ensemble/build.py REPOSITORY            # for shipyard
    python examples/digits_ensemble/build.py REPOSITORY --triton   # for the Triton wheel (no ONNX backend)

The CNN is built by code (``shipyard.zoo``, trained in seconds on scikit-learn's bundled digits)
and published with its processing models by ``components.publish.publish_with_processing``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORT_PYTHON_MODEL = HERE.parent / "python_models" / "onnx_runtime_model.py"


def build(repository: Path, triton: bool = False) -> None:
    """Publish the pipeline into ``repository``. ``triton``: serve the CNN through a Python model
    running ONNX Runtime (examples/python_models/onnx_runtime_model.py), because the Triton
    server of the nvidia-pytriton wheel carries no ONNX Runtime backend."""
    from shipyard.components.publish.ensemble import publish_with_processing
    from shipyard.serving_runtime.config import load_config, render_config
    from shipyard.zoo import onnx_model

    published = publish_with_processing(
        onnx_model("digits_cnn"),
        repository,
        "digits_cnn",
        preprocess=HERE / "models" / "preprocess",
        postprocess=HERE / "models" / "postprocess",
        ensemble_name="digits",
        max_batch_size=8,
        batching={"max_batch_size": 8, "max_queue_delay_microseconds": 0},
    )
    if triton:
        model_dir = Path(repository) / "digits_cnn"
        shutil.copyfile(ORT_PYTHON_MODEL, model_dir / str(published.model.version) / "model.py")
        config = load_config(model_dir / "config.pbtxt")
        config.platform = ""
        config.backend = "python"
        (model_dir / "config.pbtxt").write_text(render_config(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--triton", action="store_true", help="serve the CNN through a Python model (Triton wheel)")
    args = parser.parse_args(argv)
    build(args.repository, args.triton)
    print(f"built {args.repository}: models preprocess, digits_cnn, postprocess and the ensemble digits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
