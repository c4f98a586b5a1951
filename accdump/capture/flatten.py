"""Finds the tensors inside module arguments and outputs, with a key saying where each was."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

MAX_DEPTH = 6


def iter_tensors(obj: Any, key: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for tensors in nested tuples / lists / dicts / dataclasses (HF ModelOutput
    is a dict). Keys join positions and names with '.', e.g. '0', 'past.1', 'hidden_states'."""
    if isinstance(obj, torch.Tensor):
        yield key or "0", obj
        return
    if depth >= MAX_DEPTH or obj is None or isinstance(obj, (int, float, str, bool)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from iter_tensors(v, f"{key}.{k}" if key else str(k), depth + 1)
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from iter_tensors(v, f"{key}.{i}" if key else str(i), depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_tensors(
                getattr(obj, f.name, None), f"{key}.{f.name}" if key else f.name, depth + 1
            )
