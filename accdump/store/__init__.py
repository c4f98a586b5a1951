"""The dump format: a directory of per-rank HDF5 segment files (see docs/format.md)."""

from accdump.store.reader import Dump, Record, load
from accdump.store.schema import FORMAT_NAME, FORMAT_VERSION, Role

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Dump", "Record", "Role", "load"]
