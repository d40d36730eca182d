"""Client command groups over the REST API: projects, users, tokens, blobs, lineage, audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from underlay.cli.common import cell, client, show

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar (none is drawn off a terminal).")
]

projects = typer.Typer(help="Projects (tenants) and their members.", no_args_is_help=True)
users = typer.Typer(help="Users (global admins only, except 'me').", no_args_is_help=True)
tokens = typer.Typer(help="Your API tokens.", no_args_is_help=True)
blobs = typer.Typer(help="Encrypted, content-addressed blobs of a project.", no_args_is_help=True)
audit = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@projects.command("ls")
def projects_ls(json_: JsonOpt = False) -> None:
    """List the projects you can see."""
    with client() as c:
        show(c.list_projects(), ["name", "description", "created_at"], as_json=json_)


@projects.command("create")
def projects_create(
    name: str, description: Annotated[str, typer.Option(help="What the project is for.")] = ""
) -> None:
    """Create a project; you become its admin."""
    with client() as c:
        project = c.create_project(name, description)
    typer.echo(f"created project {project.name}")


@projects.command("delete")
def projects_delete(
    name: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False
) -> None:
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
        show(c.list_members(project), ["user", "role", "created_at"], as_json=json_)


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
        show(c.list_users(), ["name", "email", "is_admin", "is_active"], as_json=json_)


@users.command("me")
def users_me(json_: JsonOpt = False) -> None:
    """Who the current token belongs to, and its projects."""
    with client() as c:
        show(c.me(), ["name", "is_admin", "projects"], as_json=json_)


@users.command("create")
def users_create(
    name: str,
    password: Annotated[
        bool, typer.Option("--password", help="Prompt for a password (for 'underlay login').")
    ] = False,
    email: Annotated[str | None, typer.Option(help="Contact address.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make a global admin.")] = False,
) -> None:
    """Create a user."""
    secret = (
        typer.prompt("password", hide_input=True, confirmation_prompt=True) if password else None
    )
    with client() as c:
        user = c.create_user(name, password=secret, email=email, is_admin=admin)
    typer.echo(f"created user {user.name}")


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
        cols = ["id", "name", "prefix", "expires_at", "revoked_at", "last_used_at"]
        show(c.list_tokens(), cols, as_json=json_)


@tokens.command("create")
def tokens_create(
    name: str,
    days: Annotated[int | None, typer.Option(help="Expire after this many days.")] = None,
    user: Annotated[str | None, typer.Option(help="Admins: create it for this user.")] = None,
) -> None:
    """Create a token; its secret is printed once."""
    with client() as c:
        token = c.create_token(name, expires_in_days=days, user=user)
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
    project: str,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    quiet: QuietOpt = False,
) -> None:
    """Upload a file; prints its SHA-256 digest (a progress bar goes to stderr)."""
    from underlay.cli.progress import byte_bar

    with client() as c, byte_bar(f"put {path.name}", path.stat().st_size, quiet=quiet) as bar:
        blob = c.upload_blob(project, path, progress=bar)
    typer.echo(blob.digest)


@blobs.command("get")
def blobs_get(
    project: str,
    digest: str,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="A file, a folder (the blob's name in it) or - (stdout)."),
    ],
    quiet: QuietOpt = False,
) -> None:
    """Download a blob, verifying its digest; nothing is left behind if it fails."""
    import sys

    from underlay.cli.progress import byte_bar

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
def blobs_rm(project: str, digest: str) -> None:
    """Delete a blob from a project."""
    with client() as c:
        c.delete_blob(project, digest)
    typer.echo(f"deleted blob {digest} from {project}")


@blobs.command("ls")
def blobs_ls(project: str, json_: JsonOpt = False) -> None:
    """List a project's blobs."""
    with client() as c:
        show(c.list_blobs(project), ["digest", "size", "name", "created_at"], as_json=json_)


@audit.command("ls")
def audit_ls(
    json_: JsonOpt = False,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied or error.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """List audit entries, oldest first."""
    with client() as c:
        rows = c.list_audit(
            actor=actor, action=action, project=project, outcome=outcome, limit=limit
        )
    show(rows, ["seq", "at", "actor", "action", "resource", "outcome", "client"], as_json=json_)


@audit.command("verify")
def audit_verify(
    local: Annotated[
        bool, typer.Option("--local", help="Verify this machine's store directly, no server.")
    ] = False,
) -> None:
    """Check the hash chain and signed checkpoints; exit 1 and name the first bad entry."""
    if local:
        from underlay.config import Settings
        from underlay.platform import Platform

        platform = Platform(Settings())
        try:
            report = platform.audit.verify(platform.signer.public_key_bytes())
        finally:
            platform.close()
        ok, entries, problem = report.ok, report.entries_checked, report.problem
    else:
        with client() as c:
            remote = c.verify_audit()
        ok, entries, problem = remote.ok, remote.entries_checked, remote.problem
    if not ok:
        typer.echo(f"audit log FAILED verification: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"audit log OK: {entries} entries, chain and signed checkpoints intact")


def lineage(
    project: str,
    kind: str,
    object_id: str,
    direction: Annotated[str, typer.Option(help="upstream, downstream or both.")] = "both",
    depth: Annotated[int | None, typer.Option(help="At most this many hops.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Show where an object came from and what came from it."""
    with client() as c:
        graph = c.lineage(project, kind, object_id, direction=direction, depth=depth)
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
