"""Client side of _zygote_server: run a function of _children in a forked, pre-imported child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ChildResult:
    rc: int  # exit status, or -N when killed by signal N
    timed_out: bool  # killed at its time limit (or at kill_after)
    out: str
    err: str
    seconds: float


def child_env() -> dict[str, str]:
    """The environment of a child Python: this repository importable, no recording inherited."""
    env = {k: v for k, v in os.environ.items() if k != "ACCDUMP_RECORD"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Zygote:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="accdump-zygote-")
        self._n = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._zygote_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=child_env(),
        )
        ready = self._proc.stdout.readline() if self._proc.stdout else ""
        if ready.strip() != "ready":
            raise RuntimeError(f"the zygote did not start (exit status {self._proc.poll()})")

    def run(
        self, func: str, *args: object, timeout: float = 60.0, kill_after: float | None = None
    ) -> ChildResult:
        self._n += 1
        out, err = (Path(self._dir.name) / f"{self._n}.{k}" for k in ("out", "err"))
        out.touch()  # a child killed before it opened them leaves them empty
        err.touch()
        req = {
            "func": func,
            "args": [str(a) if isinstance(a, Path) else a for a in args],
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
            "kill_after": kill_after,
        }
        assert self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died (exit status {self._proc.poll()})")
        reply = json.loads(line)
        res = ChildResult(
            reply["rc"],
            reply["timed_out"],
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            reply["seconds"],
        )
        out.unlink()
        err.unlink()
        return res

    def cli(self, *argv: object, timeout: float = 60.0) -> ChildResult:
        """`accdump ARGV...` through accdump.cli.main.main in a forked child."""
        return self.run("cli", *map(str, argv), timeout=timeout)

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()
        self._dir.cleanup()


def assert_one_line_error(res: ChildResult, names: Path | str, what: str = "") -> str:
    """`res` is a CLI run that failed cleanly: exit status 2, one `accdump: error:` line on stderr
    naming `names`, no traceback. Returns the line."""
    assert not res.timed_out, f"{what}: hung"
    assert res.rc == 2, f"{what}: exit status {res.rc}\nstdout: {res.out[-1500:]}\nstderr: {res.err[-3000:]}"
    assert "Traceback" not in res.err and "Traceback" not in res.out, f"{what}: {res.err[-3000:]}"
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("accdump: error: "), f"{what}: {res.err}"
    assert str(names) in lines[0], f"{what}: the message does not name {names}: {lines[0]}"
    return lines[0]
