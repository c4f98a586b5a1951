"""The CLI reference (docs/cli.md) made from the CLI's own help, so that it cannot drift.

python -m accdump.cli.reference > docs/cli.md
"""

from __future__ import annotations

from typer.testing import CliRunner

from accdump.cli.main import app

WIDTH = 100
_ENV = {"COLUMNS": str(WIDTH), "TERM": "dumb", "NO_COLOR": "1", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env=_ENV, terminal_width=WIDTH, prog_name="accdump")
    lines = [line.rstrip() for line in result.output.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines).rstrip() + "\n"


def cli_reference() -> str:
    """Markdown: `accdump --help`, then each command's help, in the CLI's order."""
    names = [c.name or c.callback.__name__.rstrip("_") for c in app.registered_commands if c.callback]
    parts = [
        "# accdump command-line reference\n",
        "Generated from the CLI's help by `python -m accdump.cli.reference > docs/cli.md`; "
        "a test checks that it matches.\n",
        f"```text\n{_help([])}```\n",
    ]
    parts += [f"## accdump {name}\n\n```text\n{_help([name])}```\n" for name in names]
    return "\n".join(parts)


if __name__ == "__main__":
    print(cli_reference(), end="")
