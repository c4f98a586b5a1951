"""Loads the compiled extension accdump._C if it was built, and says why not otherwise.

Importing accdump never fails because of the extension: `ops` falls back to the pure-PyTorch
reference. Set ACCDUMP_DISABLE_NATIVE=1 to force the fallback.
"""

from __future__ import annotations

import importlib
import os

_loaded = False
_reason = "not loaded yet"
_kind: str | None = None


def _load() -> None:
    global _loaded, _reason, _kind
    if os.environ.get("ACCDUMP_DISABLE_NATIVE") == "1":
        _reason = "disabled by ACCDUMP_DISABLE_NATIVE=1"
        return
    try:
        importlib.import_module("accdump._C")
    except Exception as exc:  # any load failure (missing file, ABI or symbol mismatch) means fallback
        _reason = f"accdump._C could not be loaded: {type(exc).__name__}: {exc}"
        return
    try:
        from accdump import _build_info

        _kind = _build_info.EXTENSION_KIND
    except ImportError:
        _kind = "cpu"
    try:
        from accdump import _fakes  # noqa: F401  (registers fake kernels once the ops exist)
    except RuntimeError as exc:  # an op missing: the build predates this source
        _reason = (
            f"accdump._C is out of date ({' '.join(str(exc).split())}): rebuild it "
            "(pip install --no-build-isolation -e . or make setup)"
        )
        return
    _loaded = True
    _reason = f"accdump._C loaded ({_kind} build)"


_load()


def available() -> bool:
    """True when accdump._C is loaded."""
    return _loaded


def reason() -> str:
    """Why the native backend is or is not in use, in one line."""
    return _reason


def has_kernel(device_type: str) -> bool:
    """True when accdump._C has kernels for tensors on `device_type` ('cpu', 'cuda', ...)."""
    if not _loaded:
        return False
    if device_type == "cpu":
        return True
    return device_type == "cuda" and _kind == "cuda"
