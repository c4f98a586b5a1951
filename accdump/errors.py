"""The exceptions accdump raises; every one derives from AccdumpError."""

from __future__ import annotations


class AccdumpError(Exception):
    """Base of every error accdump raises on purpose."""


class OpInputError(AccdumpError, ValueError):
    """A numerics op got an input it cannot take (shape, device or dtype)."""


class NativeUnavailableError(AccdumpError, RuntimeError):
    """The native backend was asked for explicitly but is not usable here."""
