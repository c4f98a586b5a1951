"""`accdump` command line: demo, record, import, show, compare, verify, selfcheck.

Errors become one line and exit status 2."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from accdump.cli._errors import report

app = typer.Typer(
    help="Find where an inference run goes numerically wrong.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
if not console.is_terminal:
    console = Console(width=200)  # plain text for pipes and logs: wide rather than truncated
_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    """Find where an inference run goes numerically wrong."""
    _state["debug"] = debug


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def record(
    ctx: typer.Context,
    output: Annotated[str, typer.Option("-o", "--output", help="Dump directory to write.")],
    mode: Annotated[str, typer.Option(help="stats | tensor | hash")] = "stats",
    level: Annotated[str, typer.Option(help="module | op | all")] = "module",
    include: Annotated[list[str] | None, typer.Option(help="Record only names matching this glob.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Skip names matching this glob.")] = None,
    module_type: Annotated[list[str] | None, typer.Option(help="Record only modules of this class.")] = None,
    op: Annotated[list[str] | None, typer.Option(help="Record only ATen ops matching this glob.")] = None,
    steps: Annotated[str | None, typer.Option(help="Steps to record, e.g. 0,3-5.")] = None,
    ranks: Annotated[str | None, typer.Option(help="Ranks to record, e.g. 0-3.")] = None,
    role: Annotated[
        list[str] | None, typer.Option(help="input | output | parameter | probe | tokens")
    ] = None,
    max_tensor_mb: Annotated[
        float | None, typer.Option(help="Keep only statistics of larger tensors.")
    ] = None,
    params: Annotated[bool, typer.Option(help="Also record parameters (once).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a recording already in the directory.")] = False,
    strict: Annotated[bool, typer.Option(help="Fail the run if the dump cannot be written.")] = False,
    meta: Annotated[list[str] | None, typer.Option(help="KEY=VALUE metadata to store.")] = None,
    graph_tensor_mb: Annotated[
        float | None,
        typer.Option(
            help="Tensor mode: device memory each CUDA graph may hold for full-tensor copies (1024)."
        ),
    ] = None,
) -> None:
    """Run a command unchanged while recording every module it runs.

    Example: accdump record -o dumps/golden -- python run_model.py --prompt "hi"
    """
    from accdump.cli.record import options_from_cli, run_recorded

    command = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise typer.BadParameter("give the command to run after --, e.g. -- python script.py")
    opts = options_from_cli(
        mode,
        level,
        include or [],
        exclude or [],
        module_type or [],
        op or [],
        steps,
        ranks,
        role or [],
        max_tensor_mb,
        params,
        overwrite,
        strict,
        meta or [],
        graph_tensor_mb=graph_tensor_mb,
    )
    raise typer.Exit(run_recorded(output, opts, command))


@app.command()
def show(
    path: Annotated[str, typer.Argument(help="Dump directory.")],
    name: Annotated[str | None, typer.Argument(help="Glob of record names to list.")] = None,
    rank: Annotated[int | None, typer.Option(help="Only this rank.")] = None,
    step: Annotated[int | None, typer.Option(help="Only this step.")] = None,
    limit: Annotated[int, typer.Option(help="Most records to list.")] = 200,
) -> None:
    """Summarise a dump; with NAME, list matching records and their statistics.

    Example: accdump show dumps/golden 'model.layers.3.*'
    """
    from accdump.cli.show import show as show_dump

    show_dump(path, name, rank, step, limit, console)


@app.command()
def compare(
    golden: Annotated[str, typer.Argument(help="Golden (reference) dump directory.")],
    target: Annotated[str, typer.Argument(help="Target (suspect) dump directory.")],
    rename: Annotated[
        str | None, typer.Option(help="YAML/JSON rules: regex -> replacement on target names.")
    ] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the full result as JSON.")] = None,
    csv_out: Annotated[str | None, typer.Option("--csv", help="Write every pair's metrics as CSV.")] = None,
    html_out: Annotated[
        str | None, typer.Option("--html", help="Write a self-contained HTML report.")
    ] = None,
    thresholds: Annotated[
        str | None, typer.Option(help="YAML/JSON verdict limits, with per-name-glob overrides.")
    ] = None,
    cosine: Annotated[float | None, typer.Option(help="Cosine a pair must reach to pass.")] = None,
    device: Annotated[
        str | None, typer.Option(help="Where to compute metrics (default: cuda if present).")
    ] = None,
    structural: Annotated[
        bool, typer.Option(help="Align records whose names differ by structure (class/op, role, shape).")
    ] = True,
    unshard: Annotated[
        str | None,
        typer.Option(help="YAML/JSON rules for putting a multi-rank target's shards together."),
    ] = None,
    golden_format: Annotated[
        str | None,
        typer.Option(help="GOLDEN is another tool's dump: a preset of import --list-presets, or auto."),
    ] = None,
    golden_pattern: Annotated[
        str | None, typer.Option(help="GOLDEN is a folder of tensor files: import's --pattern.")
    ] = None,
    golden_rank: Annotated[int | None, typer.Option(help="import's --rank, for a foreign GOLDEN.")] = None,
    golden_dtype: Annotated[str | None, typer.Option(help="import's --dtype, for a foreign GOLDEN.")] = None,
    target_format: Annotated[
        str | None,
        typer.Option(help="TARGET is another tool's dump: a preset of import --list-presets, or auto."),
    ] = None,
    target_pattern: Annotated[
        str | None, typer.Option(help="TARGET is a folder of tensor files: import's --pattern.")
    ] = None,
    target_rank: Annotated[int | None, typer.Option(help="import's --rank, for a foreign TARGET.")] = None,
    target_dtype: Annotated[str | None, typer.Option(help="import's --dtype, for a foreign TARGET.")] = None,
    import_dir: Annotated[
        str | None,
        typer.Option(help="Keep the dumps imported from foreign sides in DIR/golden, DIR/target."),
    ] = None,
) -> None:
    """Find the first op where TARGET diverges from GOLDEN. Exit status: 0 none, 1 found, 2 error.

    A side written by another tool is imported on the fly (into a temporary dump) with
    --golden-format / --target-format (or --*-pattern); one that records no execution order takes
    the other side's.

    Example: accdump compare dumps/golden dumps/target --html report.html

    Example: accdump compare dumps/golden tllm_debug/ --target-format trtllm --target-rank 0
    """
    from dataclasses import replace

    from rich.progress import Progress

    from accdump.cli.import_ import print_imported
    from accdump.diff import RenameRules, Thresholds
    from accdump.diff import compare as run_compare
    from accdump.diff.report import print_summary, write_csv, write_html, write_json
    from accdump.diff.unshard import UnshardRules
    from accdump.importers.direct import Foreign, compared_sides

    rules = RenameRules.load(rename) if rename else None
    unshard_rules = UnshardRules.load(unshard) if unshard else None
    th = Thresholds.load(thresholds) if thresholds else Thresholds()
    if cosine is not None:
        th = replace(th, cosine=(cosine, th.cosine[1], th.cosine[2]))
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("comparing", total=None)
        with compared_sides(
            golden,
            target,
            Foreign(golden_format, golden_pattern, golden_rank, golden_dtype),
            Foreign(target_format, target_pattern, target_rank, target_dtype),
            import_dir=import_dir,
            rename=rename,
            progress=lambda what, i, n: bar.update(task, description=what, completed=i, total=n),
        ) as (g, t):
            bar.update(task, description="comparing", completed=0, total=None)
            result = run_compare(
                g.path,
                t.path,
                structural=structural,
                rules=rules,
                unshard=unshard_rules,
                thresholds=th,
                device=device,
                progress=lambda i, n: bar.update(task, completed=i, total=n),
            )
            result = replace(result, golden=g.shown, target=t.shown)  # the paths given, not a temporary dump
            written = []
            for path, writer in ((json_out, write_json), (csv_out, write_csv), (html_out, write_html)):
                if path:  # while an imported side's dump still exists: the HTML reads tensors from it
                    bar.update(task, description=f"writing {path}", total=None)
                    writer(result, path)
                    written.append(path)
    print_summary(result, console)
    for role, side in (("golden", g), ("target", t)):
        print_imported(role, side, console, rename is not None)
    for path in written:
        console.print(f"wrote {path}")
    raise typer.Exit(result.exit_code)


@app.command(name="import")
def import_(
    src: Annotated[str | None, typer.Argument(help="Folder (or file) the other tool wrote.")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="Dump directory to write.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="msprobe | sglang | trtllm | trtllm-torch (default: detected).")
    ] = None,
    pattern: Annotated[
        str | None, typer.Option(help="Map relative paths to fields, e.g. 'iteration_{step}/{name}.npy'.")
    ] = None,
    rank: Annotated[
        int | None, typer.Option(help="Rank of a source that names none; else import only this rank.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="True dtype of raw / integer values, e.g. bfloat16 for uint16 .npy.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail when any file would be left out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a recording already in the directory.")] = False,
    calls_per_step: Annotated[
        int | None,
        typer.Option(help="trtllm-torch: calls of the root's children per step (default: detected)."),
    ] = None,
    order_like: Annotated[
        str | None, typer.Option(help="Golden dump whose execution order sources without one take.")
    ] = None,
    rename: Annotated[
        str | None, typer.Option(help="Rules matching imported names to --order-like's (default: preset's).")
    ] = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List the presets and exit.")] = False,
) -> None:
    """Turn a dump written by another tool into an accdump dump, so show / compare / verify work on it.

    Example: accdump import msprobe_dump/ -o dumps/target && accdump compare dumps/golden dumps/target
    """
    from rich.progress import Progress

    from accdump.cli.import_ import print_import, print_presets
    from accdump.importers import import_dump

    if list_presets:
        print_presets(console)
        raise typer.Exit(0)
    if src is None or output is None:
        raise typer.BadParameter("give the source folder and -o/--output (or --list-presets)")
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("importing", total=None)
        result = import_dump(
            src,
            output,
            preset=preset,
            pattern=pattern,
            rank=rank,
            dtype=dtype,
            strict=strict,
            overwrite=overwrite,
            calls_per_step=calls_per_step,
            order_like=order_like,
            rename=rename,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    print_import(result, console)


@app.command()
def verify(
    checkpoint: Annotated[str, typer.Option(help="safetensors file, shard directory or index .json.")],
    dump: Annotated[str, typer.Option(help="Dump recorded with --mode tensor.")],
    layer: Annotated[str, typer.Option(help="Glob of checkpoint layer names.")] = "*",
    step: Annotated[int | None, typer.Option(help="Only this step.")] = None,
    rank: Annotated[int | None, typer.Option(help="Only this rank.")] = None,
    device: Annotated[str | None, typer.Option(help="Where to compute (default: cuda if present).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Check each quantized linear's recorded output against the exact reference computed from
    its recorded input and the checkpoint; name the bug when one fails. Exit: 0 ok, 1 fail, 2 error.

    Example: accdump verify --checkpoint ckpt/ --dump dumps/target --layer '*mlp*'
    """
    from rich.progress import Progress

    from accdump.cli.verify import print_run, write_json
    from accdump.quant.verify_dump import verify_dump

    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("verifying", total=None)
        run = verify_dump(
            checkpoint,
            dump,
            layer,
            step,
            rank,
            device,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    print_run(run, console)
    if json_out:
        write_json(run, json_out)
        console.print(f"wrote {json_out}")
    raise typer.Exit(run.exit_code)


@app.command()
def demo(
    bug: Annotated[str, typer.Option(help="fp8-scales | rope | kv-cache | none")] = "fp8-scales",
    out: Annotated[
        str, typer.Option("-o", "--out", help="Output directory (a previous demo's output is replaced).")
    ] = "accdump-demo",
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda if present).")] = None,
    tokens: Annotated[int, typer.Option(help="Tokens to generate: the prefill and the decode steps.")] = 8,
) -> None:
    """Plant a bug in a small built-in model, record a golden and a buggy run, and let accdump
    find it (compare, and verify for the FP8 bug). Exit status: 0 found, 1 missed, 2 error.

    Example: accdump demo --bug rope --out /tmp/accdump-demo
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from accdump.cli.demo import print_demo
    from accdump.cli.verify import write_json
    from accdump.demo import run_demo

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("building the model", total=None)
        result = run_demo(
            bug, out, device, tokens, progress=lambda stage: bar.update(task, description=stage)
        )
    if result.verification is not None:
        result.reports["verify"] = result.out_dir / "verify.json"
        write_json(result.verification, result.reports["verify"])
    print_demo(result, console)
    raise typer.Exit(result.exit_code)


@app.command()
def selfcheck() -> None:
    """Check the build: run every op on random data and compare with the float64 reference.

    Example: accdump selfcheck
    """
    from accdump import ops
    from accdump.selfcheck import run_selfcheck

    rows = run_selfcheck()
    failed = [r for r in rows if not r.ok]
    verdict = "all ops agree with the float64 reference" if not failed else f"{len(failed)} check(s) FAILED"
    console.print(f"[bold]{'OK' if not failed else 'FAIL'}[/bold]: {verdict}")
    console.print(f"native backend: {ops.backend_reason()}")
    table = Table("op", "device", "dtype", "backend", "max rel err vs float64", "ok")
    for r in rows:
        table.add_row(r.op, r.device, r.dtype, r.backend, f"{r.max_rel_err:.2e}", "yes" if r.ok else "NO")
    console.print(table)
    raise typer.Exit(1 if failed else 0)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int):
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001  (every failure becomes one line and status 2)
        if type(exc).__name__ == "Abort":  # Ctrl-C at a prompt
            sys.exit(130)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # a usage error from the CLI parser
            exc.show()
            sys.exit(2)
        sys.exit(report(exc, _state["debug"]))


if __name__ == "__main__":
    main()
