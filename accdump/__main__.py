"""`python -m accdump ...` (e.g. under torchrun) is the `accdump` command."""

from accdump.cli.main import main

main()
