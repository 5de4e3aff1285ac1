"""The user-facing example (examples/digits_ensemble): image bytes -> Python preprocessing -> the
digits CNN (ONNX) -> Python top-3 labels, as an ensemble, published by
``publish_with_processing``; served by the real Triton and by shipyard with the same answers."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conformance_repo import python_backend_available
from conformance_servers import ROOT, require_triton, start_shipyard

from benchmarks.servers.triton import TritonServer, start_triton

COUNT = 16


def _example() -> ModuleType:
    path = Path(ROOT) / "examples" / "digits_ensemble" / "build.py"
    spec = importlib.util.spec_from_file_location("digits_example_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels[0] * 255).astype(np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """(PNG bytes [COUNT, 1], true digits) from the held-out split of the bundled digits."""
    from shipyard.zoo import digits_data

    data = digits_data()
    encoded = np.array([[_png(x)] for x in data.x_test[:COUNT]], dtype=np.object_)
    return encoded, data.y_test[:COUNT]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    require_triton()
    root = tmp_path_factory.mktemp("digits-triton")
    _example().build(root / "repo", triton=True)
    server = start_triton([root / "repo"], root / "tritonserver.log")
    try:
        yield server
    finally:
        server.stop()


def _infer(url: str, encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        labels, scores = [], []
        for start in range(0, len(encoded), 8):  # max_batch_size 8
            tensor = grpcclient.InferInput("IMAGE", [len(encoded[start : start + 8]), 1], "BYTES")
            tensor.set_data_from_numpy(encoded[start : start + 8])
            result = client.infer("digits", [tensor])
            labels.append(result.as_numpy("LABELS"))
            scores.append(result.as_numpy("SCORES"))
        return np.concatenate(labels), np.concatenate(scores)
    finally:
        client.close()


def _bad_image_error(url: str) -> Any:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits", [tensor])
    client.close()
    return caught.value


def test_triton_serves_the_example_pipeline(triton: TritonServer, images: tuple[np.ndarray, np.ndarray]) -> None:
    import onnxruntime as ort
    from PIL import Image

    from shipyard.zoo import onnx_model

    encoded, truth = images
    labels, scores = _infer(triton.grpc_url, encoded)
    assert labels.shape == (COUNT, 3) and scores.shape == (COUNT, 3)
    # The reference: the same decode and the CNN run here directly.
    decoded = [np.asarray(Image.open(io.BytesIO(bytes(e[0]))).convert("L"), dtype=np.float32) for e in encoded]
    pixels = np.stack([(d / 255.0)[None] for d in decoded])
    session = ort.InferenceSession(str(onnx_model("digits_cnn")), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": pixels})[0].argmax(axis=1)
    assert [int(label) for label in labels[:, 0]] == expected.tolist()
    assert np.mean(expected == truth) >= 0.8  # the CNN reads the PNG round trip as digits
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all(scores[:, 0] > 0.1)
    error = _bad_image_error(triton.grpc_url)
    assert "in ensemble 'digits'" in error.message() and "not an image Pillow can read" in error.message()


@pytest.mark.skipif(
    not python_backend_available(), reason='shipyard does not serve backend: "python" yet (the pre/post models)'
)
def test_shipyard_answers_as_triton(
    triton: TritonServer, images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    encoded, _ = images
    _example().build(tmp_path / "repo")
    shipyard = start_shipyard(tmp_path / "repo", tmp_path / "shipyard.log")
    try:
        labels, scores = _infer(shipyard.grpc_url, encoded)
        error = _bad_image_error(shipyard.grpc_url)
    finally:
        shipyard.process.stop()
    expected_labels, expected_scores = _infer(triton.grpc_url, encoded)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(scores, expected_scores)  # the same ONNX Runtime, the same bits
    assert "in ensemble 'digits'" in error.message() and str(error.status()) == "StatusCode.INTERNAL"
