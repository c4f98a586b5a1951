"""`accdump demo`: the short summary of a demo run."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from accdump.demo.run import DemoResult
from accdump.quant import VerifyRun


def _tokens(tokens: list[int], other: list[int]) -> str:
    """Token ids, those that differ from `other` marked in bold."""
    return " ".join(
        f"[bold]{t}[/bold]" if i >= len(other) or t != other[i] else str(t) for i, t in enumerate(tokens)
    )


def _steps(steps: list[int]) -> str:
    steps = sorted(set(steps))
    if len(steps) > 2 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"steps {steps[0]}-{steps[-1]}"
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(map(str, steps))


def verify_lines(run: VerifyRun) -> list[str]:
    """One line per failing layer (its steps and diagnosis), then how many layer calls pass."""
    if not run.checks:
        return ["NOTHING CHECKED: no recorded FP8 layer could be verified", *run.notes]
    steps: dict[str, list[int]] = {}
    diagnosis: dict[str, str] = {}
    for c in run.failed:
        steps.setdefault(c.record_name, []).append(c.step)
        d = c.check.diagnosis
        diagnosis.setdefault(
            c.record_name, f"{d.description} ({d.hypothesis})" if d else "no known bug matches"
        )
    passed = [c for c in run.checks if c.check.passed]
    ok = f"{len(passed)} calls of {len({c.record_name for c in passed})} FP8 layers match the exact reference"
    if not steps:
        return [f"OK: {ok}"]
    return [f"FAIL {name} ({_steps(s)}): {diagnosis[name]}" for name, s in steps.items()] + [
        f"the other {ok}"
    ]


def print_demo(result: DemoResult, console: Console) -> None:
    p = result.planted
    if result.found:
        verdict = (
            f"[bold green]FOUND[/bold green]: accdump names the planted bug: {p.module} at step {p.step}"
            if p.module
            else "[bold green]OK[/bold green]: no bug planted, and accdump reports no divergence"
        )
    else:
        where = f"{p.module} at step {p.step}" if p.module else "nowhere (no bug planted)"
        verdict = (
            f"[bold red]MISSED[/bold red]: the bug was planted in {where}; see below what accdump reports"
        )
    console.print(verdict)
    console.print(f"planted: {escape(p.description)}")
    golden_label, target_label = "golden (float32)", f"target ({result.target_label})"
    width = max(len(golden_label), len(target_label))
    console.print(f"{golden_label:<{width}}  tokens {_tokens(result.golden_tokens, result.target_tokens)}")
    console.print(f"{target_label:<{width}}  tokens {_tokens(result.target_tokens, result.golden_tokens)}")
    tok = result.comparison.first_token_diff
    if tok is not None:
        console.print(
            f"first differing token: the one fed to step {tok['step']}: "
            f"golden {tok['golden_token']}, target {tok['target_token']}"
        )
    elif p.module:
        console.print("the generated tokens agree: the bug is silent in the output")
    console.print(f"compare: {escape(result.comparison.verdict_line())}")
    if result.verification is not None:
        for i, line in enumerate(verify_lines(result.verification)):
            console.print(("verify:  " if i == 0 else "         ") + escape(line))
    files = [str(result.reports[k]) for k in ("html", "json", "verify") if k in result.reports]
    console.print(f"reports: {'  '.join(files)}")
    golden, target = result.out_dir / "golden", result.out_dir / "target"
    console.print(f"by hand: accdump compare {golden} {target} --html {result.out_dir / 'report.html'}")
    if "checkpoint" in result.reports:
        console.print(
            f"         accdump verify --checkpoint {Path(result.reports['checkpoint'])} --dump {target}"
        )
    console.print(f"[dim]{result.seconds:.1f} s on {result.device}[/dim]")
