"""Torch definitions of the zoo models, the digits training loop and the ONNX export.

Imported only when a torch model is asked for (torch is a ``pipeline`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from shipyard.zoo.api import DigitsData


class DigitsCNN(nn.Module):
    """Two conv layers and a small head for 1x8x8 digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_digits_cnn(model: DigitsCNN, data: DigitsData, epochs: int = 40, seed: int = 0) -> float:
    """Train in place (Adam, mini-batches of 64; a few seconds on a CPU); returns test accuracy."""
    torch.manual_seed(seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
    model.eval()
    return accuracy(model, data.x_test, data.y_test)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on numpy inputs and labels."""
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def wide_mlp(seed: int = 0) -> nn.Module:
    """512->2048->2048->2048->512 with ReLU, random weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(512, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 512),
    )


class _Block(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        out = channels * stride
        self.body = nn.Sequential(
            nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.Conv2d(out, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.skip: nn.Module = (
            nn.Identity()
            if stride == 1
            else nn.Sequential(nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet_cnn(seed: int = 0) -> nn.Module:
    """A ResNet-style CNN for 3x64x64 inputs (stem, four residual blocks, global pool, 10 logits)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        _Block(32, 1),
        _Block(32, 2),
        _Block(64, 1),
        _Block(64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


class AddSub(nn.Module):
    """The add/sub model as torch (for TorchScript backend tests)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b, a - b


def export_onnx(module: nn.Module, sample: dict[str, np.ndarray], path: str, max_batch: int) -> None:
    """Export ``module`` to ONNX with a dynamic batch axis named ``batch`` (1..max_batch).

    Input names are the keys of ``sample``; outputs are ``logits`` for classifiers and ``output``
    otherwise (the zoo's conventions).
    """
    names = list(sample)
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    with torch.inference_mode():
        out = module(*args)
    output_names = ["logits"] if out.shape[-1] == 10 else ["output"]
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    import inspect

    params = list(inspect.signature(module.forward).parameters)
    torch.onnx.export(
        module,
        args,
        path,
        input_names=names,
        output_names=output_names,
        dynamic_shapes={params[i]: {0: batch} for i in range(len(names))},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
