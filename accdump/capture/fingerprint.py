"""Hex form of a tensor fingerprint (the fingerprint itself is ops.tensor_fingerprint_into)."""

from __future__ import annotations

import numpy as np


def hex_digest(pair: tuple[int, int]) -> str:
    return "".join(f"{v & 0xFFFFFFFFFFFFFFFF:016x}" for v in pair)


def hex_digests(table: np.ndarray) -> np.ndarray:
    """hex_digest of each row of an int64 [n, 2] table, as `S32` bytes, without a Python loop:
    the hex of the big-endian bytes of both lanes is exactly the two 16-digit halves."""
    text = np.ascontiguousarray(table, dtype=">i8").tobytes().hex().encode()
    return np.frombuffer(text, dtype="S32")
