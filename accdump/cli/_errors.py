"""Library errors become one line on stderr and exit status 2 (--debug shows the traceback)."""

from __future__ import annotations

import sys
import traceback

from accdump.errors import AccdumpError

EXIT_USAGE = 2


def report(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, AccdumpError):
        print(f"accdump: error: {exc}", file=sys.stderr)
    else:
        print(f"accdump: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_USAGE
