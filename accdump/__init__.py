"""accdump: find where a neural-network inference run goes numerically wrong."""

from accdump.errors import AccdumpError, NativeUnavailableError, OpInputError

__version__ = "0.1.0"

__all__ = ["AccdumpError", "NativeUnavailableError", "OpInputError", "__version__"]
