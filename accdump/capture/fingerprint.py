"""Hex form of a tensor fingerprint (the fingerprint itself is ops.tensor_fingerprint_into)."""

from __future__ import annotations

from accdump.store.record_table import hex_digests


def hex_digest(pair: tuple[int, int]) -> str:
    return "".join(f"{v & 0xFFFFFFFFFFFFFFFF:016x}" for v in pair)


__all__ = ["hex_digest", "hex_digests"]
