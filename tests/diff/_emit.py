"""One golden and one target tensor, each recorded as the output of a module, and compared."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import accdump
from accdump.diff import Pair
from accdump.store import Role


class Emit(nn.Module):
    """Returns a fixed tensor whatever its input."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.clone()


def compare_outputs(tmp_path: Path, golden: torch.Tensor, target: torch.Tensor, mode: str) -> Pair:
    """The pair of the two tensors, each recorded with `mode` as the output of an Emit module."""
    for side, value in (("g", golden), ("t", target)):
        module = Emit(value)
        with torch.no_grad(), accdump.record(module, tmp_path / side, mode=mode):
            module(torch.zeros(1))
    result = accdump.compare(tmp_path / "g", tmp_path / "t", device="cpu")
    (pair,) = [p for p in result.pairs if p.target.role == Role.OUTPUT]
    return pair
