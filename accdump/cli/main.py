"""`accdump` command: subcommands map library errors to one line and exit status 2."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Find where an inference run goes numerically wrong.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def _root() -> None:
    """Find where an inference run goes numerically wrong."""


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
    app()


if __name__ == "__main__":
    main()
