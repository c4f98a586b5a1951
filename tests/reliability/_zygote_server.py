"""A Python with torch and accdump already imported that forks one child per request, so the
reliability tests run hundreds of short-lived processes (a killed recorder, a CLI run on a damaged
dump that might crash libhdf5) without paying for the imports each time, and without risking the
pytest process itself.

Protocol, one JSON object per line: a request on stdin
`{"func": NAME, "args": [...], "stdout": FILE, "stderr": FILE, "timeout": S, "kill_after": S|null}`
runs `tests.reliability._children.NAME(*args)` in a forked child whose stdout and stderr go to the
files; `kill_after` SIGKILLs it that many seconds after the fork, `timeout` SIGKILLs it if still
running then. The reply on stdout: `{"rc": exit status or -signal, "timed_out": bool, "seconds": S}`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)  # no OpenMP pool in the parent: its threads would not survive fork()

from tests.reliability import _children  # noqa: E402  (imports accdump and what the children run)

CHILD_FAILED = 70  # the child raised an exception its function did not turn into an exit status


def _wait(pid: int, deadline: float) -> tuple[int, bool]:
    """(exit status, killed at the deadline) of child `pid`."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), True
        time.sleep(0.001)


def _child(req: dict) -> None:
    code = CHILD_FAILED
    try:
        for fd, key in ((1, "stdout"), (2, "stderr")):
            out = os.open(req[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        code = int(getattr(_children, req["func"])(*req["args"]) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  (reported through the exit status and stderr)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _warm_up() -> None:
    """Runs the CLI once here, so that what it imports and builds lazily is shared by every child."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        _children.cli("--help")
        _children.cli("show", "/nonexistent/accdump-warm-up")


def main() -> None:
    _warm_up()
    reply = os.fdopen(os.dup(1), "w")  # fd 1 itself is handed to each child's stdout file
    reply.write("ready\n")
    reply.flush()
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(req)
        kill_after = req.get("kill_after")
        rc, timed_out = _wait(pid, t0 + (kill_after if kill_after is not None else req["timeout"]))
        reply.write(json.dumps({"rc": rc, "timed_out": timed_out, "seconds": time.monotonic() - t0}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
