"""What every CLI command shares: the resolved client configuration, output, error handling."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.table import Table
    from rich.text import Text

    from underlay.client import Client
    from underlay.client.profiles import ClientConfig


@dataclass
class GlobalOptions:
    """The options given before the command (``underlay --profile work jobs ls``)."""

    profile: str | None = None
    url: str | None = None


OPTIONS = GlobalOptions()

# One spelling of the options every command shares. A boolean flag has an empty metavar, so
# help shows it as a plain flag (``--json``), not ``--json <bool>``.
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print JSON instead of a table.")]
YesOpt = Annotated[bool, typer.Option("--yes", metavar="", help="Do not ask.")]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project", "-p", help="The project (else UNDERLAY_PROJECT, else the profile's)."
    ),
]


def choices(values: Iterable[str] | None, valid: Iterable[str], option: str) -> list[str] | None:
    """A multi-valued option given repeated, comma-separated or both (``--state a,b --state c``),
    each value checked against ``valid``; None when the option was not given."""
    if not values:
        return None
    allowed = list(valid)
    picked = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [v for v in picked if v not in allowed]
    if unknown:
        raise typer.BadParameter(
            f"unknown {', '.join(map(repr, unknown))}; valid: {', '.join(allowed)}",
            param_hint=option,
        )
    return list(dict.fromkeys(picked))


def print_json(payload: object) -> None:
    """``--json`` output of a command whose data is not a model (a dict the API returned)."""
    print(json.dumps(payload, indent=2))


def config(*, project: str | None = None, must_exist: bool = True) -> ClientConfig:
    """The resolved client configuration: flags > environment > profile > defaults."""
    from underlay.client.profiles import resolve

    return resolve(profile=OPTIONS.profile, url=OPTIONS.url, project=project, must_exist=must_exist)


def client() -> Client:
    """A client for the resolved URL and token; no token is an error that says what to do.
    It retries as :func:`retry_budget` says."""
    from underlay.client import Client
    from underlay.errors import Unauthenticated

    resolved = config()
    if not resolved.token.value:
        raise Unauthenticated(
            "no token: set UNDERLAY_TOKEN or run 'underlay login' "
            f"(profile {resolved.profile.value!r} has none)"
        )
    assert resolved.url.value is not None
    return Client(resolved.url.value, resolved.token.value, retry_budget_s=retry_budget())


def retry_budget(environ: Mapping[str, str] | None = None) -> float:
    """How long a command's calls retry an unreachable server: ``UNDERLAY_RETRY_BUDGET_S``;
    else, inside a job (``UNDERLAY_JOB_ID``), the SDK's default, since there nobody waits at a
    terminal and a server restart must not fail the job; else not at all (a command at a
    terminal says at once that the server is down)."""
    from underlay.client.retries import DEFAULT_BUDGET_S, budget_from_env

    env = os.environ if environ is None else environ
    return budget_from_env(DEFAULT_BUDGET_S if env.get("UNDERLAY_JOB_ID") else 0.0, env)


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


@dataclass(frozen=True)
class Col:
    """A table column: the field it shows, how, and whether it may go when space is short.

    ``ident`` columns (names, ids, digests, and times) are never cut or wrapped; ``optional``
    ones are dropped, last first, when the table does not fit the terminal; the rest wrap.
    """

    key: str
    header: str | None = None
    fmt: Callable[[dict[str, Any]], str] | None = None
    optional: bool = False
    ident: bool = False

    def text(self, row: dict[str, Any]) -> Text:
        return cell(self.fmt(row) if self.fmt else row.get(self.key))


def when(key: str, *, optional: bool = False) -> Col:
    """A timestamp column shortened to the minute (UTC)."""
    from underlay.cli.units import timestamp

    return Col(key, fmt=lambda row: timestamp(row.get(key)), optional=optional, ident=True)


def show(
    rows: Sequence[BaseModel] | BaseModel,
    columns: Sequence[str | Col],
    *,
    as_json: bool,
    title: str | None = None,
) -> None:
    """Print models as a table that fits the terminal, or as JSON (raw values) with ``--json``.

    Cells hold what clients sent (names, paths): control characters are shown escaped
    (``\\x1b``), and square brackets are never read as Rich markup.
    """
    items = [rows] if not isinstance(rows, Sequence) else list(rows)
    if as_json:
        payload: Any = [r.model_dump(mode="json") for r in items]
        if not isinstance(rows, Sequence):
            payload = payload[0]
        print(json.dumps(payload, indent=2))
        return
    data = [item.model_dump(mode="json") for item in items]
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    print_table(cols, [[c.text(row) for c in cols] for row in data], title=title)


def print_table(
    columns: Sequence[Col], cells: Sequence[Sequence[Text]], *, title: str | None = None
) -> None:
    """Print rows of cells, dropping optional columns (last first) until the table fits.

    If even the essential columns do not fit, the table is printed wider than the terminal
    rather than cut: an identifier that cannot be copied whole is worse than a long line.
    """
    from rich.console import Console

    console = Console()
    keep = list(range(len(columns)))
    while True:
        mins = [_min_width(columns[i], [r[i] for r in cells]) for i in keep]
        room = console.width - (3 * len(keep) + 1)  # borders and padding
        optional = [i for i in keep if columns[i].optional]
        if sum(mins) <= room or not optional:
            break
        keep.remove(optional[-1])
    kept = [columns[i] for i in keep]
    rows = [[r[i] for i in keep] for r in cells]
    if sum(mins) > room:  # as wide as it needs: the terminal wraps, nothing is cut
        console, widths = Console(width=10_000), None
    else:
        widths = _widths(
            mins, [_natural_width(c, [r[i] for r in rows]) for i, c in enumerate(kept)], room
        )
    console.print(_table(kept, rows, title, mins, widths))


def _natural_width(column: Col, cells: Sequence[Text]) -> int:
    """The width a column takes unwrapped: its widest line or header."""
    from rich.cells import cell_len

    lines = [line for text in cells for line in str(text).splitlines()]
    return max([cell_len(column.header or column.key), *map(cell_len, lines)])


def _widths(mins: list[int], natural: list[int], room: int) -> list[int] | None:
    """Column widths within ``room``: each its minimum, the rest shared out up to its natural
    width; None when every column fits unwrapped (Rich's own layout is then exact)."""
    natural = [max(n, m) for n, m in zip(natural, mins, strict=True)]
    if sum(natural) <= room:
        return None
    widths, spare = list(mins), room - sum(mins)
    while spare > 0:
        short = [i for i, w in enumerate(widths) if w < natural[i]]
        share = max(1, spare // max(1, len(short)))
        for i in short:
            grant = min(share, natural[i] - widths[i], spare)
            widths[i] += grant
            spare -= grant
        if not short:
            break
    return widths


def _min_width(column: Col, cells: Sequence[Text]) -> int:
    """The narrowest a column can be: its widest cell for an identifier, else its longest word."""
    words = [w for text in (column.header or column.key, *map(str, cells)) for w in text.split()]
    if column.ident:
        return max([len(w) for w in words] + [c.cell_len for c in cells])
    return max((len(w) for w in words), default=1)


def _table(
    columns: Sequence[Col],
    cells: Sequence[Sequence[Text]],
    title: str | None,
    mins: Sequence[int],
    widths: Sequence[int] | None,
) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(
            col.header or col.key,
            no_wrap=col.ident,
            min_width=mins[i],
            width=widths[i] if widths else None,
            overflow="fold",
        )
    for row in cells:
        table.add_row(*row)
    return table


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


def parse_ref(ref: str, kind: str, *, latest: bool = False) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@3`` (and ``NAME@latest`` where ``latest``) as (name, version or
    None for the latest) of a versioned object: a dataset or a table."""
    from underlay.errors import InvalidInput

    name, _, version = ref.partition("@")
    if latest and version == "latest":
        version = ""
    if not name or (version and not version.isdigit()):
        forms = "NAME, NAME@3 or NAME@latest" if latest else "NAME or NAME@3"
        raise InvalidInput(f"{ref!r} is not a {kind} reference: write {forms}")
    return name, int(version) if version else None


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


def delete_in_project(kind: str, name: str, project: str | None, yes: bool, what: str) -> str:
    """Confirm (unless ``--yes``) deleting ``kind`` ``name`` and ``what`` goes with it;
    returns the project it is in."""
    project_name = project_of(project)
    if not yes:
        typer.confirm(f"delete {kind} {name} of {project_name} and {what}?", abort=True)
    return project_name
