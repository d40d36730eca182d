"""The ``underlay`` command line (Typer + Rich). Heavy imports stay inside the commands."""
