"""``underlay admin``: recovery that needs this machine's home folder, not the API."""

from __future__ import annotations

import getpass
import json
from typing import Annotated

import typer

admin = typer.Typer(
    help="Local recovery (run on the server's machine, with access to its home and database).",
    no_args_is_help=True,
)


@admin.command("reset-token")
def reset_token(
    user: Annotated[
        str, typer.Option(help="The user whose bootstrap token is replaced.")
    ] = "admin",
    json_: Annotated[
        bool, typer.Option("--json", metavar="", help="Print user, token and file as JSON.")
    ] = False,
) -> None:
    """Revoke the first admin's (bootstrap) token and make a new one: printed, and written to
    admin.token (0600) in the home. Needs file access to the home and the database, which is
    the proof of authority; audited as the local OS user."""
    from underlay.config import Settings, write_secret_file
    from underlay.identity import reset_bootstrap_token
    from underlay.platform import Platform
    from underlay.store import Scope

    platform = Platform(Settings())
    try:
        platform.db.migrate(lock_dir=platform.settings.home)
        path = platform.settings.admin_token_path
        with platform.db.session(Scope.everything()) as session:
            token, secret = reset_bootstrap_token(session, user)
            write_secret_file(path, f"{secret}\n".encode(), overwrite=True)
            platform.audit.append(
                session,
                actor=f"local:{getpass.getuser()}",
                action="token.reset",
                resource=f"user:{user}",
                outcome="ok",
                detail={"token_id": token.id, "prefix": token.prefix},
            )
    finally:
        platform.close()
    if json_:
        typer.echo(json.dumps({"user": user, "token": secret, "path": str(path)}, indent=2))
        return
    typer.echo(secret)
    typer.echo(
        f"new token for {user!r} ({token.prefix}…) also written to {path}; "
        "the old bootstrap token is revoked",
        err=True,
    )
