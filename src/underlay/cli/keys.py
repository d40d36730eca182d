"""``underlay keys``: master-key operations on this machine's home folder."""

from __future__ import annotations

import getpass

import typer

keys = typer.Typer(help="Encryption keys (run on the server's machine).", no_args_is_help=True)


@keys.command("rotate")
def rotate() -> None:
    """Re-wrap every project data key under a new master key; data is not re-encrypted."""
    from underlay.config import Settings
    from underlay.platform import Platform
    from underlay.store import Scope

    platform = Platform(Settings())
    try:
        platform.db.migrate(lock_dir=platform.settings.home)
        old = platform.keyring.master_key_id
        new = platform.keyring.rotate(platform.db)
        with platform.db.session(Scope.everything()) as session:
            platform.audit.append(
                session,
                actor=f"local:{getpass.getuser()}",
                action="keys.rotate",
                resource="master-key",
                outcome="ok",
                detail={"old": old, "new": new},
            )
    finally:
        platform.close()
    typer.echo(f"master key rotated: {old} -> {new}; the old key is no longer accepted")
