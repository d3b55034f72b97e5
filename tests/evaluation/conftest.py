"""Shared fixtures: a tiny random network with the FID Inception's TorchScript layout (no download)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn


class TinyInception(nn.Module):
    """Same module names as the TF-ported FID Inception (``layers.mixed_6``, ``output``), 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 8, 3, stride=2),
            pool1=nn.AdaptiveAvgPool2d(2),
            mixed_6=nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()),
            pool2=nn.AdaptiveAvgPool2d(1),
        ))
        self.output = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


@pytest.fixture(scope="session")
def tiny_inception_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nets") / "tiny_inception.pt"
    torch.jit.save(torch.jit.script(TinyInception().eval()), str(path))
    return str(path)
