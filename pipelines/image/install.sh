#!/bin/sh
# Install shipyard into the Python environment of the KFP component image.
#   sh pipelines/image/install.sh PYTHON WHEEL
# pipelines/Dockerfile runs it, and tests/pipelines/test_pipeline_image.py runs the same script into
# a fresh venv, so the test checks what the image holds. Nothing GPU unless asked:
#   EXTRAS       shipyard extras (default: pipeline,serve,s3,gcs,azure; add gpu for a GPU image)
#   TORCH_SPEC   the torch requirement (default: torch==2.13.0)
#   TORCH_INDEX  pip options for torch (the Dockerfile passes the CPU wheel index)
set -eu
PYTHON=$1
WHEEL=$2
EXTRAS=${EXTRAS:-pipeline,serve,s3,gcs,azure}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
"$PYTHON" -m pip install --quiet --upgrade pip
# torch first, from the index given, so that the extras' resolution keeps this build
# shellcheck disable=SC2086
"$PYTHON" -m pip install --quiet $TORCH_INDEX "$TORCH_SPEC"
"$PYTHON" -m pip install --quiet "${WHEEL}[${EXTRAS}]"
"$PYTHON" -m pip check
