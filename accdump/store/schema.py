"""The record table of a dump segment: one row per captured tensor.

Names, roles and arguments are data (columns), never HDF5 paths. Statistics are columns too:
thousands of tiny HDF5 objects would be slow to write and read.
"""

from __future__ import annotations

import enum

import numpy as np

FORMAT_NAME = "accdump"
FORMAT_VERSION = 1
SEGMENT_GLOB = "seg*.h5"
RECORDS = "records"
HEAP = "heap"
# Fixed-width columns (HDF5 and NumPy 'S' / 'U') drop a value's trailing NULs. A string
# column's value that ends with NUL is kept with a guard after it: in NumPy unicode arrays the
# lone surrogate U+DCFF, which encode("utf-8", "surrogateescape") writes as the byte 0xFF (never
# part of UTF-8); readers take the byte off again.
NUL_GUARD = b"\xff"
NUL_GUARD_CHAR = NUL_GUARD.decode("utf-8", "surrogateescape")


def nul_guarded(value: str) -> str:
    """`value` as a string column keeps it (NUL_GUARD_CHAR after a trailing NUL)."""
    return value + NUL_GUARD_CHAR if value.endswith("\x00") else value


# the statistics columns, in the order of accdump.ops.TensorStats (and of the native ops' rows)
STATS_FIELDS: tuple[str, ...] = (
    "count",
    "nan",
    "posinf",
    "neginf",
    "zeros",
    "min",
    "max",
    "sum",
    "mean",
    "std",
    "absmax",
    "l2norm",
    "min_abs_nonzero",
)


class Role(enum.IntEnum):
    """What a record's tensor was to the code that produced it."""

    INPUT = 0
    OUTPUT = 1
    PARAMETER = 2
    PROBE = 3
    TOKENS = 4  # token ids passed to the root module


ROLE_NAMES = {r: r.name.lower() for r in Role}

STRING_COLUMNS = ("name", "arg", "kind", "dtype", "device", "hash")

# Fixed-width columns only (strings as UTF-8 bytes sized per segment, shapes as fixed arrays):
# variable-length HDF5 types cost a Python-level conversion per row, which the writer thread
# would spend holding the GIL beside the user's program.
REQUIRED_COLUMNS = (
    "step",
    "order",
    "name",
    "call",
    "role",
    "arg",
    "kind",
    "dtype",
    "ndim",
    "shape",
    "strides",
    "storage_offset",
    "contiguous",
    "device",
    *STATS_FIELDS,
    "hash",
    "heap_offset",
    "heap_nbytes",
)


def record_dtype(string_widths: dict[str, int], max_ndim: int) -> np.dtype:
    """The record table's dtype for one segment: strings `S<width>`, shapes padded to `max_ndim`."""
    dims = max(1, max_ndim)

    def s(col: str) -> str:
        return f"S{max(1, string_widths.get(col, 1))}"

    return np.dtype(
        [
            ("step", "<i8"),
            ("order", "<i8"),  # position in execution order within the step
            ("name", s("name")),  # module path, op path (module/op.index) or probe name
            ("call", "<i4"),  # call index of this name within the step
            ("role", "u1"),  # Role
            ("arg", s("arg")),  # argument index or key, nested as "0.1" / "past.key"
            ("kind", s("kind")),  # module class name, ATen op name, "probe" or "tokens"
            ("dtype", s("dtype")),  # torch dtype name, e.g. "bfloat16"
            ("ndim", "<i4"),
            ("shape", "<i8", (dims,)),  # first ndim entries are the shape
            ("strides", "<i8", (dims,)),
            ("storage_offset", "<i8"),
            ("contiguous", "?"),
            ("device", s("device")),
            *[(f, "<f8") for f in STATS_FIELDS],
            ("hash", s("hash")),  # hex fingerprint in hash mode, else empty
            ("heap_offset", "<i8"),  # byte offset of the full tensor in the segment's heap, -1 if not stored
            ("heap_nbytes", "<i8"),
        ]
    )
