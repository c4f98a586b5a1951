"""The record table of a dump segment: one row per captured tensor.

Names, roles and arguments are data (columns), never HDF5 paths. Statistics are columns too:
thousands of tiny HDF5 objects would be slow to write and read.
"""

from __future__ import annotations

import enum

import h5py
import numpy as np

from accdump.ops import STATS_FIELDS

FORMAT_NAME = "accdump"
FORMAT_VERSION = 1
SEGMENT_GLOB = "seg*.h5"
RECORDS = "records"
HEAP = "heap"


class Role(enum.IntEnum):
    """What a record's tensor was to the code that produced it."""

    INPUT = 0
    OUTPUT = 1
    PARAMETER = 2
    PROBE = 3
    TOKENS = 4  # token ids passed to the root module


ROLE_NAMES = {r: r.name.lower() for r in Role}

_STR = h5py.string_dtype("utf-8")
_INTS = h5py.vlen_dtype(np.dtype("int64"))

RECORD_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("order", "<i8"),  # position in execution order within the step
        ("name", _STR),  # module path, op path (module/op.index) or probe name
        ("call", "<i4"),  # call index of this name within the step
        ("role", "u1"),  # Role
        ("arg", _STR),  # argument index or key, nested as "0.1" / "past.key"
        ("kind", _STR),  # module class name, ATen op name, or "probe"
        ("dtype", _STR),  # torch dtype name, e.g. "bfloat16"
        ("shape", _INTS),
        ("strides", _INTS),
        ("storage_offset", "<i8"),
        ("contiguous", "?"),
        ("device", _STR),
        *[(f, "<f8") for f in STATS_FIELDS],
        ("hash", _STR),  # hex fingerprint in hash mode, else ""
        ("heap_offset", "<i8"),  # byte offset of the full tensor in the segment's heap, -1 if not stored
        ("heap_nbytes", "<i8"),
    ]
)
