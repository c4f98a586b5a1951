"""The dump format: a directory of per-rank HDF5 segment files (see docs/format.md).

The reader loads on first use: the segment writer process imports this package's writing modules
without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from accdump.store.schema import FORMAT_NAME, FORMAT_VERSION, Role

if TYPE_CHECKING:
    from accdump.store.reader import Dump, Record, load

_LAZY = {"Dump", "Record", "load"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("accdump.store.reader"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Dump", "Record", "Role", "load"]
