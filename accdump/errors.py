"""The exceptions accdump raises; every one derives from AccdumpError."""

from __future__ import annotations


class AccdumpError(Exception):
    """Base of every error accdump raises on purpose."""


class OpInputError(AccdumpError, ValueError):
    """A numerics op got an input it cannot take (shape, device or dtype)."""


class NativeUnavailableError(AccdumpError, RuntimeError):
    """The native backend was asked for explicitly but is not usable here."""


class DumpFormatError(AccdumpError):
    """A dump file is missing, truncated, corrupt, or not an accdump dump of a known version."""


class DumpExistsError(AccdumpError):
    """The output directory already holds a recording, or another recorder is writing to it."""


class RecordWriteError(AccdumpError):
    """Writing a dump failed (disk full, permissions); completed steps remain readable."""


class CheckpointError(AccdumpError):
    """A checkpoint is missing, unreadable, or holds a quantized layout accdump does not recognise."""


class DemoError(AccdumpError, ValueError):
    """`accdump demo` was given options it cannot run with (an unknown bug, too few tokens, an
    output directory that holds something else)."""


class SourceFormatError(AccdumpError, ValueError):
    """An `accdump import` source is missing, ambiguous, or not in the layout its preset or
    pattern describes (a file that holds no tensor, a pattern without {name}, an unknown preset)."""


class UnsafeFileError(SourceFormatError):
    """A file to import would need full unpickling (it holds Python objects other than tensors and
    plain containers): refused, since loading it could run arbitrary code."""
