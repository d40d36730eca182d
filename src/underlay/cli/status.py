"""``underlay status``: this profile and, when the server answers, what it runs on.

With the server down it still prints what it knows locally, says the server is unreachable
and exits 1. Nothing secret is printed: the token only as its source, no connection strings.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer

from underlay.cli.common import JsonOpt


def status(
    json_: JsonOpt = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", metavar="SECONDS", min=0, help="Wait up to this long for the server."
        ),
    ] = 0,
) -> None:
    """Show the server (URL, version, reachable), its database, blob store, nodes and queue,
    and this profile (name, user, project). Exit 1 when the server cannot be reached."""
    from underlay.cli.common import client, config
    from underlay.errors import Unavailable

    resolved = config(must_exist=False)
    report: dict[str, Any] = {
        "url": resolved.url.value,
        "profile": resolved.profile.value,
        "project": resolved.project.value,
        "token": resolved.token.source,
        "reachable": False,
    }
    ready = _ready(str(resolved.url.value), wait)
    if not resolved.token.value:  # nothing more to ask it without a token
        if not ready:
            report["error"] = f"cannot reach the server at {resolved.url.value}"
            _print(report, json_)
            raise typer.Exit(1)
        report |= {"reachable": True, "user": "- (not logged in: underlay login)"}
        _print_anonymous(report, json_)
        return
    try:
        with client() as c:
            server, me = c.status(), c.me()
    except Unavailable as exc:
        report["error"] = str(exc)
        _print(report, json_)
        raise typer.Exit(1) from None
    report |= {"reachable": True, "user": me.name, **server.model_dump(mode="json")}
    _print(report, json_)


def _ready(url: str, wait_s: float) -> bool:
    """Whether the server answers its readiness probe, trying for up to ``wait_s`` seconds."""
    import httpx

    deadline = time.monotonic() + wait_s
    while True:
        try:
            if httpx.get(f"{url.rstrip('/')}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _print_anonymous(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"server:     {report['url']} (up)")
    print(f"profile:    {report['profile']} (user {report['user']})")


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"server:     {report['url']}", end="")
    if not report["reachable"]:
        print(f" (unreachable: {report['error']})")
    else:
        print(f" (underlay {report['version']})")
        print(f"database:   {report['database']}")
        print(f"blob store: {report['blob_store']}")
        nodes = report["nodes"]
        counts = {s: sum(n["status"] == s for n in nodes) for s in ("ready", "cordoned", "lost")}
        summary = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"
        print(f"nodes:      {len(nodes)} ({summary})")
        for n in nodes:
            print(f"  {n['name']}: {n['status']}, isolation {n['isolation']}")
        queue = report["queue"]
        print("queue:      " + ", ".join(f"{k} {v}" for k, v in queue.items()))
    user = report.get("user", "?")
    print(f"profile:    {report['profile']} (user {user}, project {report['project'] or '-'})")
    sys.stdout.flush()
