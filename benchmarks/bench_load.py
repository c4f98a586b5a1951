"""Load: a statistics-mode run of 100,000 records and a full-tensor run of a few GB keep the
recording process's memory bounded, and `accdump show` / `accdump compare` handle the dumps.

    python benchmarks/bench_load.py [--records 100000] [--tensor-mb 2048] [--json bench_load.json]

Each recording records a golden run and a target run (a weight scaled by 1.5 from the middle step
on, so that compare has something to find) of a stack of Linear layers, one step after another.
The recordings run in one child process whose peak RSS (VmHWM) is reset before each of them;
`accdump show` and `accdump compare` run as commands, their peak RSS read from wait4(). Memory is
bounded when the peak stays near the RSS measured early in the run, whatever the number of steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATS_LAYERS, STATS_WIDTH = 48, 64  # 2 + 2 * 48 = 98 records per step
TENSOR_LAYERS, TENSOR_WIDTH, TENSOR_BATCH = 8, 1024, 64  # 9 distinct 256 KiB tensors per step


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def _reset_peak() -> None:
    """Starts VmHWM afresh (Linux: writing 5 to clear_refs resets the peak RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _record_one(path: Path, mode: str, steps: int, bug: bool) -> dict:
    """Records `steps` steps (in this process); what it took, with RSS sampled along the way."""
    import torch
    from torch import nn

    import accdump

    torch.manual_seed(0)
    if mode == "stats":
        layers, width, batch = STATS_LAYERS, STATS_WIDTH, 4
    else:
        layers, width, batch = TENSOR_LAYERS, TENSOR_WIDTH, TENSOR_BATCH
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    x = torch.randn(batch, width) * 0.1
    bug_step = steps // 2
    _reset_peak()
    samples = []
    t0 = time.perf_counter()
    with torch.no_grad(), accdump.record(model, path, mode=mode) as rec:
        for i in range(steps):
            if bug and i == bug_step:
                model[layers // 2].weight.mul_(1.5)
            model(x + 0.001 * i)
            if i == max(1, steps // 20) or (i + 1) % max(1, steps // 10) == 0:
                samples.append((i + 1, round(_status_mb("VmRSS"), 1)))
    seconds = time.perf_counter() - t0
    assert rec.error is None, rec.error
    nbytes = sum(p.stat().st_size for p in path.glob("rank*/seg*.h5"))
    records = steps * (2 + 2 * layers)
    peak = _status_mb("VmHWM")
    return {
        "mode": mode,
        "steps": steps,
        "records": records,
        "seconds": seconds,
        "records_per_s": records / seconds,
        "dump_mb": nbytes / 2**20,
        "write_mb_per_s": nbytes / 2**20 / seconds,
        "rss_samples_mb": samples,
        "rss_early_mb": samples[0][1],
        "peak_rss_mb": peak,
        "growth_mb": peak - samples[0][1],
        "bug_step": bug_step if bug else None,
        "bug_layer": str(layers // 2) if bug else None,
    }


def _child_record(spec: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = [_record_one(Path(r["path"]), r["mode"], r["steps"], r["bug"]) for r in spec["runs"]]
    print(json.dumps(out))


def _peak_of_command(args: list[str], env: dict[str, str]) -> dict:
    """Like _command, with the child's own peak RSS from wait4()."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "accdump", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode(errors="replace")
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "stdout": out,
        "stderr": err,
    }


def run(records: int, tensor_mb: int, out_dir: Path) -> dict:
    """Runs the whole benchmark into `out_dir`; the result as a dict (also what --json writes)."""
    env = {k: v for k, v in os.environ.items() if k != "ACCDUMP_RECORD"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    stats_steps = max(2, math.ceil(records / (2 + 2 * STATS_LAYERS)))
    tensor_step_mb = (TENSOR_LAYERS + 1) * TENSOR_BATCH * TENSOR_WIDTH * 4 / 2**20
    tensor_steps = math.ceil(tensor_mb / tensor_step_mb) if tensor_mb > 0 else 0
    runs = [
        {"path": str(out_dir / f"stats_{k}"), "mode": "stats", "steps": stats_steps, "bug": k == "target"}
        for k in ("golden", "target")
    ]
    if tensor_steps:
        runs += [
            {
                "path": str(out_dir / f"tensor_{k}"),
                "mode": "tensor",
                "steps": max(2, tensor_steps),
                "bug": k == "target",
            }
            for k in ("golden", "target")
        ]
    proc = subprocess.run(
        [sys.executable, __file__, "_record", json.dumps({"runs": runs})],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"recording failed:\n{proc.stderr[-4000:]}")
    recorded = json.loads(proc.stdout.strip().splitlines()[-1])
    result: dict = {"recordings": [], "show": [], "compare": []}
    for spec, rec in zip(runs, recorded, strict=True):
        result["recordings"].append({"dump": Path(spec["path"]).name, **rec})
    for mode in ("stats", "tensor") if tensor_steps else ("stats",):
        golden, target = out_dir / f"{mode}_golden", out_dir / f"{mode}_target"
        shown = _peak_of_command(["show", str(golden)], env)
        result["show"].append({"dump": golden.name, **shown})
        report = out_dir / f"compare_{mode}.json"
        cmp = _peak_of_command(
            ["compare", str(golden), str(target), "--device", "cpu", "--json", str(report)], env
        )
        data = json.loads(report.read_text()) if report.exists() else {}
        cmp["pairs"] = len(data.get("pairs", []))
        cmp["verdict"] = cmp["stdout"].splitlines()[0] if cmp["stdout"] else ""
        result["compare"].append({"dumps": f"{golden.name} vs {target.name}", **cmp})
    return result


def _table(result: dict) -> str:
    lines = [
        f"{'recording':<14}{'records':>9}{'steps':>7}{'s':>8}{'records/s':>11}{'MB/s':>8}{'dump MiB':>10}"
        f"{'RSS early':>11}{'peak RSS':>10}{'growth':>8}"
    ]
    for r in result["recordings"]:
        lines.append(
            f"{r['dump']:<14}{r['records']:>9}{r['steps']:>7}{r['seconds']:>8.1f}{r['records_per_s']:>11.0f}"
            f"{r['write_mb_per_s']:>8.1f}{r['dump_mb']:>10.1f}{r['rss_early_mb']:>11.1f}{r['peak_rss_mb']:>10.1f}"
            f"{r['growth_mb']:>8.1f}"
        )
    lines.append(f"{'command':<44}{'exit':>5}{'s':>8}{'peak RSS':>10}  result")
    for r in result["show"]:
        lines.append(
            f"{'show ' + r['dump']:<44}{r['rc']:>5}{r['seconds']:>8.1f}{r['peak_rss_mb']:>10.1f}  "
            f"{r['stdout'].splitlines()[0][:60] if r['stdout'] else r['stderr'][:60]}"
        )
    for r in result["compare"]:
        lines.append(
            f"{'compare ' + r['dumps']:<44}{r['rc']:>5}{r['seconds']:>8.1f}{r['peak_rss_mb']:>10.1f}  "
            f"{r['pairs']} pairs; {r['verdict'][:70]}"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_record":
        _child_record(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000, help="records per statistics-mode dump")
    ap.add_argument(
        "--tensor-mb", type=int, default=2048, help="MB of tensors per tensor-mode dump (0: none)"
    )
    ap.add_argument(
        "--out", default=None, help="where the dumps go (default: a temporary directory, removed)"
    )
    ap.add_argument("--json", default="bench_load.json")
    args = ap.parse_args()
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="accdump-bench-load-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.records, args.tensor_mb, out_dir)
    finally:
        if args.out is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    print(_table(result))
    for r in (*result["show"], *result["compare"]):
        r.pop("stdout"), r.pop("stderr")
    Path(args.json).write_text(
        json.dumps({"what": "bench_load", "cpu_count": os.cpu_count(), **result}, indent=1)
    )


if __name__ == "__main__":
    main()
