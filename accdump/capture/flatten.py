"""Finds the tensors inside module arguments and outputs, with a key saying where each was."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

MAX_DEPTH = 6
_LEAVES = (int, float, str, bool)


def find_tensors(obj: Any, key: str = "", depth: int = 0) -> list[tuple[str, torch.Tensor]]:
    """(key, tensor) for tensors in nested tuples / lists / dicts / dataclasses (HF ModelOutput
    is a dict). Keys join positions and names with '.', e.g. '0', 'past.1', 'hidden_states'."""
    if isinstance(obj, torch.Tensor):
        return [(key or "0", obj)]
    found: list[tuple[str, torch.Tensor]] = []
    _collect(obj, key, depth, found)
    return found


def _collect(obj: Any, key: str, depth: int, found: list[tuple[str, torch.Tensor]]) -> None:
    """Appends the tensors inside the container `obj` to `found`. A list filled by plain
    recursion, with leaves skipped before their key is built: this runs for every module call."""
    if depth >= MAX_DEPTH:
        return
    items: Any
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (tuple, list)):
        items = enumerate(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = ((f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj))
    else:
        return
    for k, v in items:
        if v is None or isinstance(v, _LEAVES):
            continue
        child = f"{key}.{k}" if key else str(k)
        if isinstance(v, torch.Tensor):
            found.append((child or "0", v))
        else:
            _collect(v, child, depth + 1, found)
