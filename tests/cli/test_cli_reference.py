"""docs/cli.md is the CLI's own help: regenerate it (python -m accdump.cli.reference > docs/cli.md)
whenever a command or option changes."""

from __future__ import annotations

from pathlib import Path

from accdump.cli.main import app
from accdump.cli.reference import cli_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_reference_matches_the_cli():
    assert DOC.read_text() == cli_reference(), (
        "docs/cli.md is stale: python -m accdump.cli.reference > docs/cli.md"
    )


def test_the_reference_lists_every_command_and_option():
    import typer.main

    text = DOC.read_text()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert f"## accdump {name}\n" in text
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in text, f"{name}: {opt} missing from docs/cli.md"
