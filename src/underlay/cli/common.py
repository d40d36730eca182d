"""What every CLI command shares: the client from env or profile, output, error handling."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.text import Text

    from underlay.client import Client

PROFILE_NAME = "profile.json"


def home() -> Path:
    return Path(os.environ.get("UNDERLAY_HOME", "~/.underlay")).expanduser()


def profile_path() -> Path:
    return home() / PROFILE_NAME


def load_profile() -> dict[str, str]:
    path = profile_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_profile(url: str, token: str) -> Path:
    from underlay.config import write_secret_file

    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret_file(path, json.dumps({"url": url, "token": token}).encode(), overwrite=True)
    return path


def client() -> Client:
    """A client from ``UNDERLAY_URL``/``UNDERLAY_TOKEN``, else from the saved profile."""
    from underlay.client import Client
    from underlay.errors import Unauthenticated

    profile = load_profile()
    url = os.environ.get("UNDERLAY_URL") or profile.get("url") or "http://127.0.0.1:8765"
    token = os.environ.get("UNDERLAY_TOKEN") or profile.get("token")
    if not token:
        raise Unauthenticated("no token: set UNDERLAY_TOKEN or run 'underlay login'")
    return Client(url, token)


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
