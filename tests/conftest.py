"""Shared fixtures: tiny data and tiny models, so the suite stays fast on a 2-core CPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def mnist_like():
    """32 random 1×28×28 images in [0, 1] with labels covering 10 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    y = torch.arange(32) % 10
    return x, y
