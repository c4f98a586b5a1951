"""Starts recording in a process from the ACCDUMP_RECORD environment variable (set by
`accdump record`), so a command runs unchanged while its Python processes record."""

from __future__ import annotations

import atexit
import json
import os
import sys
from typing import Any

ENV_VAR = "ACCDUMP_RECORD"


def recorder_from_config(cfg: dict[str, Any]) -> Any:
    from accdump.capture.recorder import record

    return record(None, cfg["output"], **cfg.get("options", {}))


def start_from_env() -> None:
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return
    cfg = json.loads(raw)
    try:
        rec = recorder_from_config(cfg).start()
    except Exception as exc:  # never stop the user's program from starting
        print(f"accdump: recording not started: {exc}", file=sys.stderr)
        if cfg.get("options", {}).get("strict"):
            raise
        return
    atexit.register(rec.stop)
