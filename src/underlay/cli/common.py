"""What every CLI command shares: the resolved client configuration, output, error handling."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.text import Text

    from underlay.client import Client
    from underlay.client.profiles import ClientConfig


@dataclass
class GlobalOptions:
    """The options given before the command (``underlay --profile work jobs ls``)."""

    profile: str | None = None
    url: str | None = None


OPTIONS = GlobalOptions()


def config(*, project: str | None = None, must_exist: bool = True) -> ClientConfig:
    """The resolved client configuration: flags > environment > profile > defaults."""
    from underlay.client.profiles import resolve

    return resolve(profile=OPTIONS.profile, url=OPTIONS.url, project=project, must_exist=must_exist)


def client() -> Client:
    """A client for the resolved URL and token; no token is an error that says what to do."""
    from underlay.client import Client
    from underlay.errors import Unauthenticated

    resolved = config()
    if not resolved.token.value:
        raise Unauthenticated(
            "no token: set UNDERLAY_TOKEN or run 'underlay login' "
            f"(profile {resolved.profile.value!r} has none)"
        )
    assert resolved.url.value is not None
    return Client(resolved.url.value, resolved.token.value)


def project_of(flag: str | None) -> str:
    """The project a command works on: ``-p``, else ``UNDERLAY_PROJECT``, else the profile's."""
    from underlay.errors import InvalidInput

    project = config(project=flag).project.value
    if not project:
        raise InvalidInput(
            "no project: give -p/--project, set UNDERLAY_PROJECT, or save one with "
            "'underlay login --project NAME'"
        )
    return project


def show(
    rows: Sequence[BaseModel] | BaseModel,
    columns: Sequence[str],
    *,
    as_json: bool,
    title: str | None = None,
) -> None:
    """Print models as a table, or as JSON with ``--json``.

    Cells hold what clients sent (names, paths): control characters are shown escaped
    (``\\x1b``), and square brackets are never read as Rich markup.
    """
    from rich.console import Console
    from rich.table import Table

    items = [rows] if not isinstance(rows, Sequence) else list(rows)
    if as_json:
        payload: Any = [r.model_dump(mode="json") for r in items]
        if not isinstance(rows, Sequence):
            payload = payload[0]
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for item in items:
        data = item.model_dump(mode="json")
        table.add_row(*(cell(data.get(c)) for c in columns))
    Console().print(table)


def cell(value: object) -> Text:
    """A value as inert terminal text: control characters escaped, no markup."""
    from rich.text import Text

    from underlay.logs import escape_control

    return Text("" if value is None else escape_control(str(value)))


def read_password(from_stdin: bool, *, confirm: bool = False, label: str = "password") -> str:
    """A password from the first line of stdin (``--password-stdin``, for scripts) or from a
    hidden prompt; with stdin not a terminal and no ``--password-stdin``, an error that says
    so (a prompt there would echo the password or warn)."""
    import sys

    import typer

    from underlay.errors import InvalidInput

    if from_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise InvalidInput(f"--password-stdin read no {label}: pipe it in on one line")
        return secret
    if not sys.stdin.isatty():
        raise InvalidInput("stdin is not a terminal: pass --password-stdin and pipe the password")
    result: str = typer.prompt(label, hide_input=True, confirmation_prompt=confirm)
    return result


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, flag: str) -> dt.datetime:
    """An ISO time (UTC when it names no zone) or an age before now: ``90s``, ``15m``,
    ``1h``, ``2d``, ``1w``."""
    import re

    from underlay.errors import InvalidInput

    now = dt.datetime.now(dt.UTC)
    match = re.fullmatch(r"(\d{1,9})([smhdw])", text.strip())
    if match:
        return now - dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"{flag} {text[:40]!r} is neither an ISO time (2026-01-31T12:00) nor an age "
            "like 90s, 15m, 1h, 2d or 1w"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
