"""Client command groups over the REST API: projects, users, tokens, blobs, lineage, audit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from underlay.cli.common import (
    Col,
    JsonOpt,
    ProjectOpt,
    YesOpt,
    cell,
    client,
    parse_moment,
    project_of,
    read_password,
    show,
    when,
)
from underlay.logs import escape_control

QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", metavar="", help="No progress bar (none is drawn off a terminal)."
    ),
]

projects = typer.Typer(help="Projects (tenants) and their members.", no_args_is_help=True)
users = typer.Typer(help="Users (global admins only, except 'me').", no_args_is_help=True)
tokens = typer.Typer(help="Your API tokens.", no_args_is_help=True)
blobs = typer.Typer(help="Encrypted, content-addressed blobs of a project.", no_args_is_help=True)
audit = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
lineage = typer.Typer(
    help="Lineage: where a project's objects came from and what came from them.",
    no_args_is_help=True,
)


@projects.command("ls")
def projects_ls(json_: JsonOpt = False) -> None:
    """List the projects you can see."""
    with client() as c:
        cols = [Col("name", ident=True), Col("description"), when("created_at", optional=True)]
        show(c.list_projects(), cols, as_json=json_)


@projects.command("create")
def projects_create(
    name: str, description: Annotated[str, typer.Option(help="What the project is for.")] = ""
) -> None:
    """Create a project; you become its admin."""
    with client() as c:
        project = c.create_project(name, description)
    typer.echo(f"created project {project.name}")


@projects.command("delete")
def projects_delete(name: str, yes: YesOpt = False) -> None:
    """Delete a project and everything in it."""
    if not yes:
        typer.confirm(f"delete project {name} and all its objects?", abort=True)
    with client() as c:
        c.delete_project(name)
    typer.echo(f"deleted project {name}")


@projects.command("members")
def projects_members(project: str, json_: JsonOpt = False) -> None:
    """List a project's members and their roles."""
    with client() as c:
        cols = [Col("user", ident=True), Col("role"), when("created_at", optional=True)]
        show(c.list_members(project), cols, as_json=json_)


@projects.command("add-member")
def projects_add_member(
    project: str,
    user: str,
    role: Annotated[str, typer.Option(help="viewer, member or admin.")] = "member",
) -> None:
    """Give a user a role in a project."""
    with client() as c:
        m = c.add_member(project, user, role)
    typer.echo(f"{m.user} is {m.role} in {project}")


@projects.command("set-role")
def projects_set_role(project: str, user: str, role: str) -> None:
    """Change a member's role."""
    with client() as c:
        m = c.update_member(project, user, role)
    typer.echo(f"{m.user} is {m.role} in {project}")


@projects.command("remove-member")
def projects_remove_member(project: str, user: str) -> None:
    """Remove a user from a project."""
    with client() as c:
        c.remove_member(project, user)
    typer.echo(f"removed {user} from {project}")


@users.command("ls")
def users_ls(json_: JsonOpt = False) -> None:
    """List users."""
    with client() as c:
        cols = [
            Col("name", ident=True),
            Col("email", optional=True),
            Col("is_admin"),
            Col("is_active"),
        ]
        show(c.list_users(), cols, as_json=json_)


@users.command("me")
def users_me(json_: JsonOpt = False) -> None:
    """Who the current token belongs to, and its projects."""
    with client() as c:
        me = c.me()
    if json_:
        show(me, [], as_json=True)
        return
    from rich.console import Console

    roles = ", ".join(f"{p} ({r})" for p, r in sorted(me.projects.items())) or "none"
    lines = [
        ("user", me.name),
        ("admin", "yes (global admin)" if me.is_admin else "no"),
        ("grants", ", ".join(me.grants) or "none"),
        ("projects", roles),
    ]
    for label, value in lines:
        Console(soft_wrap=True).print(cell(f"{label + ':':<10}{value}"))


@users.command("create")
def users_create(
    name: str,
    password: Annotated[
        bool,
        typer.Option(
            "--password", metavar="", help="Prompt for a password (for 'underlay login')."
        ),
    ] = False,
    email: Annotated[str | None, typer.Option(help="Contact address.")] = None,
    admin: Annotated[
        bool, typer.Option("--admin", metavar="", help="Make a global admin.")
    ] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", metavar="", help="Read the password from stdin's first line."
        ),
    ] = False,
) -> None:
    """Create a user."""
    secret = read_password(password_stdin, confirm=True) if password or password_stdin else None
    with client() as c:
        user = c.create_user(name, password=secret, email=email, is_admin=admin)
    typer.echo(f"created user {user.name}")


@users.command("passwd")
def users_passwd(
    name: Annotated[
        str | None, typer.Argument(help="With --reset: the user whose password to set.")
    ] = None,
    reset: Annotated[
        bool,
        typer.Option("--reset", metavar="", help="Global admins: set NAME's password, no old one."),
    ] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            metavar="",
            help="Read from stdin: the old password, then the new (one a line).",
        ),
    ] = False,
) -> None:
    """Change your password (old and new, prompted), or with NAME --reset set another's.
    Your other tokens are revoked; a reset revokes all of NAME's tokens."""
    if reset != (name is not None):
        raise typer.BadParameter("give NAME with --reset, or neither to change your own")
    with client() as c:
        if name is not None:
            new = read_password(password_stdin, confirm=True, label="new password")
            c.reset_password(name, new)
            typer.echo(f"password of {name} set; all of {name}'s tokens were revoked")
            return
        old = read_password(password_stdin, label="current password")
        new = read_password(password_stdin, confirm=True, label="new password")
        me = c.change_password(old, new)
    typer.echo(f"password of {me.name} changed; your other tokens were revoked")


@users.command("grant")
def users_grant(
    name: str, grant: Annotated[str, typer.Argument(help="project-creator: may create projects.")]
) -> None:
    """Give a user a platform-wide grant (global admins only)."""
    with client() as c:
        user = c.grant(name, grant)
    typer.echo(f"{user.name} holds: {', '.join(user.grants) or 'no grants'}")


@users.command("revoke")
def users_revoke(name: str, grant: str) -> None:
    """Take a grant back from a user (global admins only)."""
    with client() as c:
        user = c.revoke_grant(name, grant)
    typer.echo(f"{user.name} holds: {', '.join(user.grants) or 'no grants'}")


@users.command("deactivate")
def users_deactivate(name: str) -> None:
    """Deactivate a user and revoke all their tokens."""
    with client() as c:
        c.update_user(name, is_active=False)
    typer.echo(f"deactivated {name}; their tokens are revoked")


@tokens.command("ls")
def tokens_ls(json_: JsonOpt = False) -> None:
    """List your tokens (never their secrets)."""
    with client() as c:
        cols = [
            Col("id", ident=True),
            Col("name", ident=True),
            Col("prefix", ident=True),
            when("expires_at"),
            when("revoked_at", optional=True),
            when("last_used_at", optional=True),
        ]
        show(c.list_tokens(), cols, as_json=json_)


@tokens.command("create")
def tokens_create(
    name: str,
    days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
    user: Annotated[str | None, typer.Option(help="Admins: create it for this user.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a token; its secret is printed once."""
    with client() as c:
        token = c.create_token(name, expires_in_days=days, user=user)
    if json_:
        show(token, [], as_json=True)
        return
    typer.echo(token.token)
    typer.echo(f"token {token.id} ({token.prefix}…): store it now, it is not shown again", err=True)


@tokens.command("revoke")
def tokens_revoke(token_id: int) -> None:
    """Revoke a token at once."""
    with client() as c:
        c.revoke_token(token_id)
    typer.echo(f"revoked token {token_id}")


@blobs.command("put")
def blobs_put(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Upload a file; prints its SHA-256 digest (a progress bar goes to stderr)."""
    from underlay.cli.progress import byte_bar

    size = path.stat().st_size
    with client() as c, byte_bar(f"put {path.name}", size, quiet=quiet or json_) as bar:
        blob = c.upload_blob(project_of(project), path, progress=bar)
    if json_:
        show(blob, [], as_json=True)
        return
    typer.echo(blob.digest)


@blobs.command("get")
def blobs_get(
    digest: str,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="A file, a folder (the blob's name in it) or - (stdout)."),
    ],
    project: ProjectOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Download a blob, verifying its digest; nothing is left behind if it fails."""
    import sys

    from underlay.cli.progress import byte_bar

    project = project_of(project)
    with client() as c:
        meta = c.read_blob(project, digest)
        with byte_bar(f"get {digest[:12]}", meta.size, quiet=quiet) as bar:
            if str(out) == "-":
                for chunk in c.iter_blob(project, digest, progress=bar):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return
            out = _blob_target(out, meta.name, digest)
            tmp = out.with_name(f".{out.name}.part")
            try:
                with tmp.open("wb") as handle:
                    for chunk in c.iter_blob(project, digest, progress=bar):
                        handle.write(chunk)
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
    typer.echo(f"wrote {out}")


def _blob_target(out: Path, name: str, digest: str) -> Path:
    """The file ``blobs get -o`` writes: ``out``, or the blob's own name inside a folder."""
    if not out.is_dir():
        return out
    base = Path(name).name  # never a path from the server
    return out / (base if base not in ("", ".", "..") else digest)


@blobs.command("rm")
def blobs_rm(digest: str, project: ProjectOpt = None) -> None:
    """Delete a blob from a project."""
    project = project_of(project)
    with client() as c:
        c.delete_blob(project, digest)
    typer.echo(f"deleted blob {digest} from {project}")


def _size(row: dict[str, object]) -> str:
    from underlay.cli.units import size

    return size(int(str(row["size"])))


BLOB_COLUMNS = [
    Col("digest", ident=True),
    Col("size", fmt=_size),
    Col("name", ident=True, optional=True),
    when("created_at", optional=True),
]


@blobs.command("ls")
def blobs_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List a project's blobs."""
    with client() as c:
        show(c.list_blobs(project_of(project)), BLOB_COLUMNS, as_json=json_)


AUDIT_COLUMNS = [
    Col("seq", ident=True),
    when("at", optional=True),
    Col("actor", ident=True),
    Col("action"),
    Col("resource", ident=True),
    Col("outcome", optional=True),
    Col("client", optional=True),
]  # optional columns go from the last: client, outcome, then the time


@audit.command("ls")
def audit_ls(
    json_: JsonOpt = False,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project.")
    ] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied or error.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time: ISO (UTC if no zone) or an age (1h, 2d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (ISO or age).")] = None,
    after: Annotated[
        int | None, typer.Option("--after", help="Entries newer than this seq (page forward).")
    ] = None,
    before: Annotated[
        int | None, typer.Option("--before", help="Entries older than this seq (next page).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """List audit entries, newest first; the next page is '--before SEQ' (printed below)."""
    if after is not None and before is not None:
        raise typer.BadParameter("--after and --before go one at a time")
    times = {
        k: parse_moment(v, f"--{k}").isoformat()
        for k, v in (("since", since), ("until", until))
        if v
    }
    filters = {"actor": actor, "action": action, "project": project, "outcome": outcome}
    with client() as c:
        rows = c.list_audit(
            **filters,
            **times,
            limit=limit,
            after_seq=after,
            before_seq=before,
            order="asc" if after is not None else "desc",
        )
    rows.sort(key=lambda e: e.seq, reverse=True)
    cursor = _audit_cursor(rows, limit, forward=after is not None)
    if json_:
        entries = [r.model_dump(mode="json") for r in rows]
        print(json.dumps({"entries": entries, "next": cursor}, indent=2))
        return
    show(rows, AUDIT_COLUMNS, as_json=False)
    if cursor:
        flag, seq = next(iter(cursor.items()))
        typer.echo(f"more: underlay audit ls --{flag} {seq} (same filters)", err=True)


def _audit_cursor(rows: list[Any], limit: int, *, forward: bool) -> dict[str, int] | None:
    """The next page's cursor: a full page may have more beyond it (older, or newer when
    paging forward with --after)."""
    if len(rows) < limit or not rows:
        return None
    return {"after": rows[0].seq} if forward else {"before": rows[-1].seq}


@audit.command("verify")
def audit_verify(
    local: Annotated[
        bool,
        typer.Option(
            "--local", metavar="", help="Verify this machine's store directly, no server."
        ),
    ] = False,
    json_: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the report as JSON.")
    ] = False,
) -> None:
    """Check the hash chain and signed checkpoints; exit 1 and name the first bad entry."""
    from underlay.schemas import AuditReportRead

    if local:
        from underlay.config import Settings
        from underlay.platform import Platform

        platform = Platform(Settings())
        try:
            report = platform.audit.verify(platform.signer.public_key_bytes())
        finally:
            platform.close()
        result = AuditReportRead.model_validate(report, from_attributes=True)
    else:
        with client() as c:
            result = c.verify_audit()
    ok, entries, problem = result.ok, result.entries_checked, result.problem
    if json_:
        show(result, [], as_json=True)
        if not ok:
            raise typer.Exit(1)
        return
    if not ok:
        typer.echo(f"audit log FAILED verification: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"audit log OK: {entries} entries, chain and signed checkpoints intact")


@lineage.command("add")
def lineage_add(
    src: Annotated[str, typer.Argument(metavar="SRC", help="KIND:ID, e.g. blob:3fa1...")],
    relation: Annotated[
        str, typer.Argument(metavar="RELATION", help="e.g. input_of, output_of, derived_from.")
    ],
    dst: Annotated[str, typer.Argument(metavar="DST", help="KIND:ID, e.g. run:train-1")],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Record that SRC stands in RELATION to DST (blob:3fa1... input_of run:train-1)."""
    source, target = _ref(src, "SRC"), _ref(dst, "DST")
    with client() as c:
        c.add_lineage(project_of(project), source, relation, target)
    if json_:
        edge = {"kind": source[0], "id": source[1]}, {"kind": target[0], "id": target[1]}
        print(json.dumps({"src": edge[0], "relation": relation, "dst": edge[1]}, indent=2))
        return
    typer.echo(escape_control(f"recorded {src} —{relation}→ {dst}"))


def _ref(text: str, hint: str) -> tuple[str, str]:
    kind, sep, object_id = text.partition(":")
    if not (sep and kind and object_id):
        raise typer.BadParameter(f"{text!r} is not KIND:ID (e.g. blob:3fa1...)", param_hint=hint)
    return kind, object_id


@lineage.command("show")
def lineage_show(
    kind: str,
    object_id: str,
    project: ProjectOpt = None,
    direction: Annotated[str, typer.Option(help="upstream, downstream or both.")] = "both",
    depth: Annotated[int | None, typer.Option(help="At most this many hops.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Show where an object came from and what came from it."""
    with client() as c:
        graph = c.lineage(project_of(project), kind, object_id, direction=direction, depth=depth)
    if json_:
        typer.echo(graph.model_dump_json(indent=2))
        return
    from rich.console import Console
    from rich.tree import Tree

    root = cell(f"{graph.root.kind}:{graph.root.id}")
    root.stylize("bold")
    tree = Tree(root)
    for edge in graph.edges:
        tree.add(
            cell(f"{edge.src.kind}:{edge.src.id} —{edge.relation}→ {edge.dst.kind}:{edge.dst.id}")
        )
    Console().print(tree)
