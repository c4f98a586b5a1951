"""The `accdump` command line."""
