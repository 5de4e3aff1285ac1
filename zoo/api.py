"""The zoo's entry points: ONNX files (cached) and torch modules, by name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

MODEL_NAMES: tuple[str, ...] = ("digits_cnn", "wide_mlp", "resnet_cnn", "add_sub")

# Bump a model's version when its definition or training changes: the cache key includes it.
_VERSIONS = {"digits_cnn": "1", "wide_mlp": "1", "resnet_cnn": "1", "add_sub": "1"}
DEFAULT_MAX_BATCH = 256


def cache_dir() -> Path:
    """Where built models are kept: ``$SHIPYARD_CACHE/zoo`` or ``~/.cache/shipyard/zoo``."""
    root = os.environ.get("SHIPYARD_CACHE") or str(Path.home() / ".cache" / "shipyard")
    path = Path(root) / "zoo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown zoo model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


@dataclass(frozen=True)
class DigitsData:
    """scikit-learn's digits, scaled to [0,1], shaped [N,1,8,8] float32, split 80/20 (fixed seed)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_data() -> DigitsData:
    """The bundled digits data set (1,797 images; no download)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return DigitsData(x_train, y_train, x_test, y_test)


def torch_model(name: str) -> torch.nn.Module:
    """The torch module for ``name`` in eval mode (the digits CNN trained, cached weights reused).

    Raises: ValueError for an unknown name; ``add_sub`` is also given as a torch module.
    """
    _check_name(name)
    from shipyard.zoo import torch_models

    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "digits_cnn": _trained_digits_cnn,
        "wide_mlp": torch_models.wide_mlp,
        "resnet_cnn": torch_models.resnet_cnn,
        "add_sub": torch_models.AddSub,
    }
    return builders[name]().eval()


def _trained_digits_cnn() -> torch.nn.Module:
    import torch

    from shipyard.zoo import torch_models

    weights = cache_dir() / f"digits_cnn-v{_VERSIONS['digits_cnn']}.pt"
    model = torch_models.DigitsCNN()
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model
    torch_models.train_digits_cnn(model, digits_data())
    _atomic_write(weights, lambda tmp: torch.save(model.state_dict(), tmp))
    return model


def example_input(name: str, batch: int = 1) -> dict[str, np.ndarray]:
    """A deterministic input batch for ``name`` (the digits CNN gets real test images)."""
    _check_name(name)
    rng = np.random.default_rng(0)
    if name == "digits_cnn":
        return {"input": digits_data().x_test[:batch]}
    if name == "wide_mlp":
        return {"input": rng.standard_normal((batch, 512), dtype=np.float32)}
    if name == "resnet_cnn":
        return {"input": rng.standard_normal((batch, 3, 64, 64), dtype=np.float32)}
    return {
        "INPUT0": rng.standard_normal((batch, 16), dtype=np.float32),
        "INPUT1": rng.standard_normal((batch, 16), dtype=np.float32),
    }


def onnx_model(name: str, max_batch: int = DEFAULT_MAX_BATCH) -> Path:
    """Path of the cached ONNX file for ``name`` with a dynamic batch axis (built on first use).

    Raises: ValueError for an unknown name.
    """
    _check_name(name)
    path = cache_dir() / f"{name}-v{_VERSIONS[name]}-b{max_batch}.onnx"
    if path.exists():
        return path
    if name == "add_sub":
        from shipyard.zoo.onnx_models import add_sub_model

        model = add_sub_model()
        import onnx

        _atomic_write(path, lambda tmp: onnx.save(model, tmp))
        return path
    from shipyard.zoo.torch_models import export_onnx

    module = torch_model(name)
    sample = example_input(name, batch=2)
    _atomic_write(path, lambda tmp: export_onnx(module, sample, tmp, max_batch=max_batch))
    return path


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
