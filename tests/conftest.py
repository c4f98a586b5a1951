"""Shared test fixtures: devices, backends and seeded random data."""

from __future__ import annotations

import pytest
import torch

from accdump import ops

CUDA = torch.cuda.is_available()

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(params=["native", "reference"])
def backend(request, device) -> str:
    if request.param == "native" and not ops.native_available(device):
        pytest.skip(f"no native kernel for {device}: {ops.backend_reason()}")
    return request.param


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
