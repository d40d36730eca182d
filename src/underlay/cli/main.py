"""The ``underlay`` command: one Typer app; errors print one line and exit non-zero."""

from __future__ import annotations

import os
import sys

import typer

from underlay.cli import demo, keys, resources, server

app = typer.Typer(
    name="underlay",
    help="underlay: self-hosted AI infrastructure. Start with 'underlay demo' or 'underlay up'.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(server.up)
app.command()(server.login)
app.command()(demo.demo)
app.add_typer(resources.projects, name="projects")
app.add_typer(resources.users, name="users")
app.add_typer(resources.tokens, name="tokens")
app.add_typer(resources.blobs, name="blobs")
app.add_typer(resources.audit, name="audit")
app.add_typer(keys.keys, name="keys")
app.command("lineage")(resources.lineage)


def main() -> None:
    """Entry point: runs the app; an UnderlayError becomes one line on stderr and exit 1."""
    from underlay.errors import UnderlayError

    try:
        app()
    except UnderlayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last line of defence: one line, never a traceback
        if os.environ.get("UNDERLAY_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (UNDERLAY_DEBUG=1 shows more)",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
