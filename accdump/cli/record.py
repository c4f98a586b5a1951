"""`accdump record -o DIR [options] -- COMMAND...`: runs a command unchanged, recording it."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

from accdump.capture.autostart import ENV_VAR
from accdump.errors import DumpExistsError

BOOT_DIR = Path(__file__).resolve().parents[1] / "capture" / "_boot"


def options_from_cli(
    mode: str,
    level: str,
    include: list[str],
    exclude: list[str],
    module_types: list[str],
    ops: list[str],
    steps: str | None,
    ranks: str | None,
    roles: list[str],
    max_tensor_mb: float | None,
    params: bool,
    overwrite: bool,
    strict: bool,
    meta: list[str],
    *,
    graph_tensor_mb: float | None = None,
) -> dict[str, Any]:
    """The keyword arguments of accdump.record() for the CLI's options (empty filters left out)."""
    filters = {
        "include": include,
        "exclude": exclude,
        "module_types": module_types,
        "op_names": ops,
        "steps": steps,
        "ranks": ranks,
        "roles": roles,
    }
    opts: dict[str, Any] = {
        "mode": mode,
        "level": level,
        "params": params,
        "overwrite": overwrite,
        "strict": strict,
        **{k: v for k, v in filters.items() if v},
    }
    if max_tensor_mb is not None:
        opts["max_tensor_bytes"] = int(max_tensor_mb * 2**20)
    if graph_tensor_mb is not None:
        opts["graph_tensor_bytes"] = int(graph_tensor_mb * 2**20)
    if meta:
        opts["metadata"] = {kv.partition("=")[0]: kv.partition("=")[2] for kv in meta}
    return opts


def run_recorded(output: str, options: dict[str, Any], command: list[str]) -> int:
    """Runs `command` with recording on; returns its exit status.

    A Python script (`script.py ARGS` or `-m module ARGS`) runs in this process; any other
    command runs as a child whose Python processes start recording through sitecustomize
    (torchrun workers each record their own rank)."""
    existing = sorted(Path(output).glob("rank*/seg*.h5"))
    if existing and not options.get("overwrite"):
        raise DumpExistsError(
            f"{output} already holds a recording ({existing[0].parent.name}/...): "
            "choose a new -o directory or pass --overwrite"
        )
    if command[0].endswith(".py") or command[0] == "-m":
        return _run_in_process(output, options, command)
    env = dict(os.environ)
    env[ENV_VAR] = json.dumps({"output": output, "options": options})
    env["PYTHONPATH"] = os.pathsep.join([str(BOOT_DIR), *filter(None, [env.get("PYTHONPATH")])])
    try:
        return subprocess.call(command, env=env)
    except FileNotFoundError:
        print(f"accdump: error: command not found: {command[0]}", file=sys.stderr)
        return 127


def _run_in_process(output: str, options: dict[str, Any], command: list[str]) -> int:
    from accdump.capture.autostart import recorder_from_config

    rec = recorder_from_config({"output": output, "options": options}).start()
    saved_argv = sys.argv[:]
    code = 0
    try:
        if command[0] == "-m":
            sys.argv = command[1:]
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = command[:]
            sys.path.insert(0, str(Path(command[0]).resolve().parent))
            runpy.run_path(command[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        rec.stop()
    return code
