"""accdump: find where a neural-network inference run goes numerically wrong.

    with accdump.record(model, "dumps/golden"):
        model.generate(...)
    dump = accdump.load("dumps/golden")

Heavy modules load on first use: importing accdump never initialises CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accdump.errors import (
    AccdumpError,
    CheckpointError,
    DemoError,
    DumpExistsError,
    DumpFormatError,
    NativeUnavailableError,
    OpInputError,
    RecordWriteError,
    SourceFormatError,
    UnsafeFileError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from accdump.capture import Recorder, paused, probe, record
    from accdump.diff import compare
    from accdump.quant import verify, verify_linear
    from accdump.store import Dump, load

_LAZY = {
    "record": "accdump.capture",
    "probe": "accdump.capture",
    "paused": "accdump.capture",
    "Recorder": "accdump.capture",
    "load": "accdump.store",
    "Dump": "accdump.store",
    "compare": "accdump.diff",
    "verify_linear": "accdump.quant",
    "verify": "accdump.quant",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'accdump' has no attribute {name!r}")


__all__ = [
    "AccdumpError",
    "CheckpointError",
    "DemoError",
    "DumpExistsError",
    "DumpFormatError",
    "compare",
    "Dump",
    "NativeUnavailableError",
    "OpInputError",
    "RecordWriteError",
    "Recorder",
    "SourceFormatError",
    "UnsafeFileError",
    "__version__",
    "load",
    "paused",
    "probe",
    "record",
    "verify",
    "verify_linear",
]
