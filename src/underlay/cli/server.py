"""``underlay up`` (serve) and ``underlay login`` (save a profile)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer


def up(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8765).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for --tls-cert.")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes.")] = 1,
    log_format: Annotated[str, typer.Option(help="text or json.")] = "text",
) -> None:
    """Serve the API (and later the dashboard) on this machine."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    if log_format not in ("text", "json"):
        raise typer.BadParameter("--log-format is text or json")
    if host:
        os.environ["UNDERLAY_SERVER__HOST"] = host
    if port is not None:
        os.environ["UNDERLAY_SERVER__PORT"] = str(port)
    os.environ["UNDERLAY_LOG_FORMAT"] = log_format
    if tls_cert is not None:
        os.environ["UNDERLAY_SERVER__TLS"] = "true"

    import uvicorn

    from underlay import logs
    from underlay.api.app import create_app
    from underlay.api.server import uvicorn_options
    from underlay.config import Settings
    from underlay.platform import Platform

    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    _check_port_free(settings.server.host, settings.server.port)
    platform = Platform(settings)
    secret = platform.start()
    if secret:
        typer.echo(
            f"first start: created user 'admin' with token {secret}\n"
            f"it is also in {settings.admin_token_path} (readable by you only); log in with "
            f"'underlay login --token \"$(cat {settings.admin_token_path})\"'. Lost it? "
            "'underlay admin reset-token' on this machine makes a new one",
            err=True,
        )
    scheme = "https" if tls_cert else "http"
    url = f"{scheme}://{settings.server.host}:{settings.server.port}"
    logging.getLogger("underlay.server").info(f"underlay serving on {url}", extra={"url": url})
    tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)} if tls_cert else {}
    common: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "log_config": None,
        "access_log": False,
        **uvicorn_options(settings),
        **tls,
    }
    if workers > 1:
        platform.close()
        uvicorn.run(
            "underlay.api.app:app_from_environment", factory=True, workers=workers, **common
        )
    else:
        uvicorn.run(create_app(platform, start=False, tune_process=True), **common)


def _check_port_free(host: str, port: int) -> None:
    """One-line error and exit 1 when ``host:port`` cannot be bound, before anything starts
    (uvicorn binds only after the app's start-up, which starts the scheduler and agent)."""
    import socket
    import sys

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"error: cannot listen on {host}:{port}: {reason.lower()}; is another server "
            "running? choose another --port",
            file=sys.stderr,
        )
        raise typer.Exit(1) from None


def login(
    url: Annotated[
        str | None,
        typer.Option(help="Server URL (else UNDERLAY_URL, the profile's, http://127.0.0.1:8765)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="An API token (else UNDERLAY_TOKEN; with --user, a password login)."),
    ] = None,
    user: Annotated[str | None, typer.Option(help="User name for password login.")] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="Save as this named profile (else UNDERLAY_PROFILE, else the current)."),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option("--project", "-p", help="The profile's default project."),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", metavar="", help="With --user: read the password from stdin."
        ),
    ] = False,
) -> None:
    """Check credentials against a server and save them as a profile (made the current one)."""
    from underlay.cli.common import OPTIONS, read_password
    from underlay.client import Client
    from underlay.client.profiles import resolve, save_profile

    resolved = resolve(
        profile=profile or OPTIONS.profile,
        url=url or OPTIONS.url,
        token=token,
        project=project,
        must_exist=False,
    )
    server, name = resolved.url.value, resolved.profile.value
    assert server is not None and name is not None
    secret = resolved.token.value if resolved.token.source != f"profile {name!r}" else None
    if password_stdin and user is None:
        from underlay.errors import InvalidInput

        raise InvalidInput("--password-stdin needs --user NAME")
    if user is not None or secret is None:
        if user is None:
            user = typer.prompt("user")
        password = read_password(password_stdin)
        with Client(server, retry_budget_s=0) as anonymous:
            secret = anonymous.login(user, password).token
    with Client(server, secret, retry_budget_s=0) as c:
        me = c.me()
    path = save_profile(name, url=server, token=secret, project=project)
    typer.echo(f"logged in to {server} as {me.name}; profile {name!r} saved in {path}")


def logout(
    profile: Annotated[
        str | None, typer.Option(help="The profile to forget (else the active one).")
    ] = None,
) -> None:
    """Forget a saved profile and its token on this machine (the token stays valid on the
    server until it expires or 'underlay tokens revoke')."""
    from underlay.cli.common import OPTIONS
    from underlay.client.profiles import remove_profile, resolve

    name = resolve(profile=profile or OPTIONS.profile, must_exist=False).profile.value
    assert name is not None
    if remove_profile(name):
        typer.echo(f"logged out: profile {name!r} removed")
    else:
        typer.echo(f"no saved profile {name!r}; nothing to do")
