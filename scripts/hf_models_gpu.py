"""The transformers-model checks of tests/models on a GPU: each architecture recorded through
`generate` in float32 (golden) and in bfloat16 (target), with and without each planted bug,
compared; prints one line per comparison and writes them as JSON.

    python scripts/hf_models_gpu.py [--json hf_models_gpu.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import accdump  # noqa: E402
from tests.models.test_transformers_models import ARCHS, build_model, prompt, record_generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="hf_models_gpu.json")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch in ARCHS.items():
            if not hasattr(transformers, arch.model_class):
                print(f"{name}: transformers {transformers.__version__} has no {arch.model_class}")
                continue
            golden_model, ids = build_model(arch).to(device), prompt().to(device)
            golden = Path(tmp) / f"{name}-golden"
            tokens = record_generate(golden_model, ids, golden)
            for bug in (None, *arch.bugs):
                model = copy.deepcopy(golden_model)
                if bug is not None:
                    bug.plant(model)
                target = Path(tmp) / f"{name}-{bug.name if bug else 'bf16'}"
                same_tokens = torch.equal(record_generate(model.to(torch.bfloat16), ids, target), tokens)
                result = accdump.compare(golden, target)
                d = result.first_divergence
                row = {
                    "arch": name,
                    "target": f"bfloat16{' + ' + bug.name if bug else ''}",
                    "planted_in": bug.module if bug else None,
                    "found": d.attributed_to if d else None,
                    "step": d.pair.target.step if d else None,
                    "right": (d is None)
                    if bug is None
                    else (d is not None and d.attributed_to == bug.module),
                    "same_tokens": same_tokens,
                    "pairs": len(result.pairs),
                    "verdict": result.verdict_line(),
                }
                rows.append(row)
                print(f"{name:8s} {row['target']:36s} right={row['right']} {row['verdict'][:150]}")
    Path(args.json).write_text(
        json.dumps({"device": device, "transformers": transformers.__version__, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
