"""Where the API server's per-request time goes: a trivial route, one layer added at a time,
against a bare FastAPI app, measured in the same run (issue 13: the serving data plane lives in
the API server process and must reach >= 0.8 of the bare app's requests/s at 64 clients).

Every variant is one uvicorn process (1 worker) answering ``GET`` with a tiny JSON body:

* ``bare``: the floor app of ``benchmarks/serving.py`` (FastAPI, ``GET /health``: an
  ``async`` route returning a ``Response``), on whatever uvicorn finds (h11 without
  httptools installed);
* ``std``: the same app under ``uvicorn[standard]`` (httptools, uvloop), from
  ``UNDERLAY_BENCH_FLOOR_STD_PYTHON`` (skipped when absent);
* ``+hardened``: ``bare`` on underlay's hardened protocol (:func:`underlay.api.server.protocol`:
  httptools when installed, else h11);
* ``+middleware``: and :class:`~underlay.api.middleware.RequestContextMiddleware`, its
  access log off;
* ``+access log``: and the access log on, configured as ``underlay up`` does (text lines on
  stderr, here a file);
* ``+sync``: and the route a plain ``def`` (FastAPI runs it in the thread pool);
* ``+model``: and a pydantic ``response_model`` (as ``/healthz`` and most routes have);
* ``+depends``: and the dependency chain of an authenticated route (``HTTPBearer``, the
  platform from ``app.state``, an actor, a request context), with a constant actor: the cost
  of FastAPI's dependency injection without the database;
* ``underlay /healthz``, ``underlay /users/me``: the real ``underlay up`` (1 worker),
  without a token and with one (authentication and a unit of work against SQLite).

For each: requests/s, p50 and p99 at concurrency 1 and 64, and the server's CPU time per
request (user + system of its process tree over the run, less what it uses idle; steadier than
requests/s on a shared machine). The load generator is that of ``benchmarks/serving.py``
(wrk, else asyncio).

    python benchmarks/api_overhead.py [--duration 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
from serving_peers import Skip, free_port, idle_cpu, peer_python, process, tree_cpu

from underlay.identity import Actor

TOKEN = "ul_bench_" + "0" * 40
VARIANTS = ("bare", "std", "+hardened", "+middleware", "+access log", "+sync", "+model", "+depends")
BODY = b'{"status":"ok"}'


def _has(variant: str, layer: str) -> bool:
    """Whether ``variant`` includes ``layer`` (each variant adds one layer to the one before)."""
    return variant != "std" and VARIANTS.index(variant) >= VARIANTS.index(layer)


# -- the variants' apps (built in the server process) ---------------------------------------


def build(variant: str) -> Any:
    from fastapi import FastAPI, Response

    app = FastAPI()
    if _has(variant, "+depends"):
        _depends_route(app)
    elif _has(variant, "+model"):
        from underlay.schemas import Health

        @app.get("/t", response_model=Health)
        def trivial_model() -> Health:
            return Health(status="ok", version="0")

    elif _has(variant, "+sync"):

        @app.get("/t")
        def trivial_sync() -> Response:
            return Response(BODY, media_type="application/json")

    else:

        @app.get("/t")
        async def trivial() -> Response:
            return Response(BODY, media_type="application/json")

    if _has(variant, "+middleware"):
        from underlay.api.middleware import RequestContextMiddleware
        from underlay.config import Settings

        settings = Settings()
        app.add_middleware(
            RequestContextMiddleware,
            max_json_body=settings.server.max_json_body,
            max_upload=settings.blobs.max_size,
            server=settings.server,
        )
    return app


@dataclass
class Context:
    platform: object
    actor: Actor
    client: str


_bearer = HTTPBearer(auto_error=False)
_ACTOR = Actor(1, "admin", True, {}, 1)


def _get_platform(request: Request) -> object:
    platform: object = request.app.state.platform
    return platform


def _current_actor(
    platform: Annotated[object, Depends(_get_platform)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    return _ACTOR


def _context(
    request: Request,
    platform: Annotated[object, Depends(_get_platform)],
    actor: Annotated[Actor, Depends(_current_actor)],
) -> Context:
    return Context(platform, actor, request.client.host if request.client else "")


def _depends_route(app: Any) -> None:
    """The shape of ``api/deps.py``'s ``Ctx`` with a constant actor instead of a DB lookup."""
    from underlay.schemas import Health

    app.state.platform = object()

    @app.get("/t", response_model=Health)  # type: ignore[untyped-decorator]
    def trivial_ctx(ctx: Annotated[Context, Depends(_context)]) -> Health:
        return Health(status="ok", version="0")


def serve(variant: str, port: int) -> None:
    import uvicorn

    options: dict[str, Any] = {"log_config": None, "access_log": False}
    if _has(variant, "+hardened"):
        from underlay.api.server import protocol
        from underlay.config import Settings

        options["http"] = protocol(Settings())  # as `underlay up`: httptools when installed
    if _has(variant, "+middleware"):
        import logging

        from underlay import logs

        logs.configure("text", "INFO")  # as `underlay up` does; the access log from +access log
        if not _has(variant, "+access log"):
            logging.getLogger("underlay.access").setLevel(logging.WARNING)
    uvicorn.run(build(variant), host="127.0.0.1", port=port, **options)


# -- measuring ------------------------------------------------------------------------------

Row = tuple[str, dict[int, tuple[loadgen.Result, float]]]


def measure(name: str, pid: int, load: loadgen.Load, args: argparse.Namespace) -> Row:
    loadgen.run(load, 8, 1, generator=args.loadgen)  # warm-up
    idle = idle_cpu(pid, 1.0)  # background loops (underlay's scheduler and agent)
    out: dict[int, tuple[loadgen.Result, float]] = {}
    for concurrency in (1, 64):
        before = tree_cpu(pid)
        result = loadgen.run(load, concurrency, args.duration, generator=args.loadgen)
        spent = max(0.0, tree_cpu(pid) - before - idle * result.seconds)
        cpu_us = spent / max(1, result.requests) * 1e6
        out[concurrency] = (result, cpu_us)
        print(f"  {name:<22} c={concurrency:<3} {_cells(result, cpu_us)}", flush=True)
    return name, out


def _cells(r: loadgen.Result, cpu_us: float) -> str:
    return (
        f"{r.rps:>8,.0f} req/s  p50 {r.p50_ms:6.2f}  p99 {r.p99_ms:7.2f} ms  {cpu_us:6.0f} us CPU"
    )


def variant_rows(root: Path, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    here = str(Path(__file__).resolve().parent)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    for variant in [v for v in VARIANTS if v in args.only]:
        port = free_port()
        path = "/t"
        python = sys.executable
        if variant == "std":
            found = peer_python("UNDERLAY_BENCH_FLOOR_STD_PYTHON", ".venv-floor-std/bin/python")
            if found is None:
                print("  std: skipped: no uvicorn[standard] interpreter (see serving.py)")
                continue
            python = found
        if variant in ("bare", "std"):  # the floor app of serving.py, one worker, /health only
            cmd = [python, "-m", "uvicorn", "serving_floor:app", "--app-dir", here]
            cmd += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
            path = "/health"
        else:
            cmd = [sys.executable, __file__, "--serve", variant, "--port", str(port)]
        url = f"http://127.0.0.1:{port}{path}"
        with process(cmd, root / f"{variant}.log", url, env=env) as proc:
            rows.append(measure(variant, proc.pid, loadgen.Load(url), args))
    return rows


def underlay_rows(root: Path, args: argparse.Namespace) -> list[Row]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port)]
    env = {"UNDERLAY_HOME": str(root / "home"), "UNDERLAY_ADMIN_TOKEN": TOKEN}
    auth = (("Authorization", f"Bearer {TOKEN}"),)
    log, home = root / "underlay.log", env["UNDERLAY_HOME"]
    with process(cmd, log, f"{base}/readyz", env=env, sweep=home) as proc:
        return [
            measure("underlay /healthz", proc.pid, loadgen.Load(f"{base}/healthz"), args),
            measure(
                "underlay /users/me",
                proc.pid,
                loadgen.Load(f"{base}/api/v1/users/me", headers=auth),
                args,
            ),
        ]


def report(rows: list[Row], args: argparse.Namespace) -> None:
    print(f"\ncommand: python benchmarks/api_overhead.py {' '.join(sys.argv[1:])}")
    print(f"{args.duration:g} s a point, 1 server process each, same run")
    head = f"{'variant':<22}{'c=1 req/s':>10}{'p50 ms':>8}{'CPU us':>8}"
    print(head + f"{'c=64 req/s':>12}{'p99 ms':>8}{'CPU us':>8}{'/ bare':>8}{'+CPU us':>9}")
    bare = dict(rows).get("bare")
    for name, by in rows:
        one, one_cpu = by[1]
        many, many_cpu = by[64]
        line = f"{name:<22}{one.rps:>10,.0f}{one.p50_ms:>8.2f}{one_cpu:>8.0f}"
        line += f"{many.rps:>12,.0f}{many.p99_ms:>8.1f}{many_cpu:>8.0f}"
        if bare:
            line += f"{many.rps / bare[64][0].rps:>7.2f}x{many_cpu - bare[64][1]:>+9.0f}"
        print(line)
    print("(/ bare: requests/s at c=64 over bare's; +CPU us: CPU per request at c=64 over bare's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a point")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "asyncio"), default="auto")
    choices = [*VARIANTS, "underlay"]
    parser.add_argument("--only", nargs="+", choices=choices, default=choices, metavar="VARIANT")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    with tempfile.TemporaryDirectory(prefix="ul-api-overhead-") as tmp:
        root = Path(tmp)
        try:
            rows = variant_rows(root, args)
            if "underlay" in args.only:
                rows += underlay_rows(root, args)
        except Skip as exc:
            raise SystemExit(str(exc)) from None
    report(rows, args)


if __name__ == "__main__":
    main()
