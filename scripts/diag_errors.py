"""Runs each native error path in a subprocess and reports how it ended (diagnosis helper)."""

import subprocess
import sys

CASES = {
    "builtin": "torch.ones(2) + torch.ones(3)",
    "stats_complex": "torch.ops.accdump.tensor_stats.default(torch.zeros(2, dtype=torch.complex64))",
    "metrics_shape": "torch.ops.accdump.compare_metrics.default(torch.ones(2), torch.ones(3), 0.0, 0.0, 1e-12)",
    "rowwise_dtype": "torch.ops.accdump.rowwise_metrics.default(torch.ones(2, dtype=torch.int32), torch.ones(2))",
}
for name, expr in CASES.items():
    code = f"import torch, accdump.ops\ntry:\n    {expr}\nexcept Exception as e:\n    print('raised', type(e).__name__, str(e).splitlines()[0])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print(f"{name}: rc={r.returncode} {r.stdout.strip()} {r.stderr.strip()[-300:]}")
