"""The hwnas command line (typer): parsing, progress, tables and exit codes; the work is in nas/."""
