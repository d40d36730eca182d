"""The data plane: how a prediction request travels inside the API server process.

For one request: authenticate the bearer token and authorize it on the project (cached a few
seconds per token and project: no database query on the hot path), find the deployment
(cached, refreshed when its ``generation`` changes), validate the inputs against the model's
signature, choose the arm (stable or canary), hand the rows to that arm's batcher, which sends
one batch in the binary wire form (:mod:`underlay.serving.wire`) to a healthy replica, round
robin, over keep-alive connections (:mod:`underlay.serving.pool`). A replica that fails to
answer (connection refused or reset: it crashed or is draining) is marked down and the batch
is retried once on another replica; none healthy is a 503 with ``Retry-After``.

Python API (used by the JSON route here and the V2 routes of ``api/routes/inference_v2.py``)::

    plane = dataplane_of(request)                       # one per app (app.state.dataplane)
    principal = await plane.authenticate(request)       # Unauthenticated -> 401
    view = await plane.describe(project, name, principal)  # NotFound for another project
    view.signature, view.version, view.ready, view.model, view.name
    result = await plane.predict(project, name, inputs, principal, request_id=rid)
    result.outputs: dict[str, np.ndarray]; result.version: int; result.request_id: str

``inputs`` map input names to arrays with rows along axis 0 (a request may carry several
rows). Errors are :mod:`underlay.errors` classes (InvalidInput 400 naming the field,
NotFound 404, RateLimited 429 with retry_after, Unavailable 503 with ``retry_after``).

What is cached and for how long: a token's actor and its right to read a project,
``server.auth_cache_ttl_s`` seconds (5 by default) and never past the token's expiry (a
revoked token, a deactivated user or a removed membership keeps working at most that
long, in every server process); a deployment's view until its generation changes (checked
every :data:`REFRESH_S` seconds, one query for all cached deployments, and dropped at once
when this process changes it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from underlay.errors import InvalidInput, NotFound, Unauthenticated, Unavailable, UnderlayError
from underlay.serving import v2, wire
from underlay.serving.batcher import Batcher
from underlay.serving.guard import Guards
from underlay.serving.jsonbody import parse_json
from underlay.serving.pool import ReplicaGone, ReplicaPool
from underlay.serving.v2 import CompiledSignature

if TYPE_CHECKING:
    from starlette.requests import Request

    from underlay.data.tables import TableStore
    from underlay.identity import Actor
    from underlay.ml.flavors.signature import Signature
    from underlay.platform import Platform

AUTH_CACHE_SIZE = 10_000  # tokens trusted at once; past it expired (then oldest) go
REFRESH_S = 0.5
REFRESH_AHEAD = 0.2  # a trusted token is renewed in the background in its last fifth
DOWN_S = 1.0
SECRET_HEADER = "x-replica-secret"  # noqa: S105 - a header name
RETRY_AFTER_S = 1

BATCHES_PER_REPLICA = 2  # one computing, one on the wire: batches grow once replicas are busy


def _in_flight(replicas: int) -> int:
    return BATCHES_PER_REPLICA * max(1, replicas)


class ModelFailed(InvalidInput):
    """The model raised on inputs that passed validation: the caller's answer is a 4xx naming
    the model's error, and for a canary it counts as the version's failure."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the actor and a stable key for its token (limits, logs)."""

    actor: Actor
    token_key: str
    key: str = ""  # the token's digest: its entry in the data plane's cache


@dataclass
class _Trusted:
    """A cached authentication: trusted until ``until`` (monotonic), with the ids of the
    projects the principal was found to read meanwhile."""

    until: float
    principal: Principal
    projects: dict[str, int] = field(default_factory=dict)
    ttl: float = 0.0  # how long it was trusted for: renewed once less than a share is left


@dataclass(frozen=True)
class PredictResult:
    outputs: dict[str, np.ndarray]
    version: int
    request_id: str


@dataclass
class Endpoint:
    replica_id: int
    url: str
    secret: str
    down_until: float = 0.0


@dataclass
class Arm:
    """One version's replicas and its batcher."""

    name: str
    version: int
    endpoints: list[Endpoint]
    batcher: Any = None
    turn: int = 0

    def pick(self, exclude: set[int]) -> Endpoint | None:
        now = time.monotonic()
        candidates = [e for e in self.endpoints if e.replica_id not in exclude]
        healthy = [e for e in candidates if e.down_until <= now]
        pool = healthy or candidates
        if not pool:
            return None
        self.turn += 1
        return pool[self.turn % len(pool)]


@dataclass
class DeploymentView:
    """A deployment as the data plane serves it."""

    project: str
    project_id: int
    name: str
    id: int
    model: str
    version: int
    generation: int
    signature: Signature | None
    compiled: CompiledSignature | None
    max_batch: int
    max_wait_ms: float
    settings: dict[str, Any]
    stable: Arm
    canary: Arm | None = None
    canary_weight: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # during a rolling update between versions of one interface: the new version's ready
    # replicas, which share the stable traffic by their number
    rolling: Arm | None = None

    @property
    def ready(self) -> bool:
        return bool(self.stable.endpoints or (self.rolling and self.rolling.endpoints))

    def arms(self) -> list[Arm]:
        return [a for a in (self.stable, self.canary, self.rolling) if a is not None]


class DataPlane:
    """One per API app; see the module docstring."""

    def __init__(self, platform: Platform, tables: TableStore | None = None) -> None:
        self.platform = platform
        self.guards = Guards(platform, tables)
        self._auth: dict[str, _Trusted] = {}
        self._flights: dict[str, asyncio.Future[_Trusted]] = {}
        self.auth_lookups = 0  # tokens looked up in the database
        self.auth_waits = 0  # requests that waited for such a look-up (no trusted entry)
        self._views: dict[tuple[str, str], DeploymentView] = {}
        self._replicas: ReplicaPool | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._retired: list[DeploymentView] = []

    # -- authentication and lookup ----------------------------------------------------------

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise Unauthenticated("no token given: send 'Authorization: Bearer <token>'")
        key = hashlib.sha256(secret.encode()).hexdigest()
        cached = self._auth.get(key)
        now = time.monotonic()
        if cached is not None and cached.until > now:
            if cached.until - now < cached.ttl * REFRESH_AHEAD and key not in self._flights:
                # still trusted: renew it in the background, so that steady traffic never
                # sees the entry lapse (a lapse under load sent every request to the database)
                self._fly(key, secret, tuple(cached.projects))
            return cached.principal
        flight = self._flights.get(key) or self._fly(key, secret, ())
        self.auth_waits += 1
        try:
            return (await asyncio.shield(flight)).principal
        except Unauthenticated as exc:
            client = request.client.host if request.client else ""
            path = request.url.path
            await asyncio.to_thread(self.platform.record_denied, f"POST {path}", path, client, exc)
            raise

    def _fly(self, key: str, secret: str, projects: tuple[str, ...]) -> asyncio.Future[_Trusted]:
        """One authentication of ``secret`` in flight at a time, however many requests wait
        for it; its result replaces the token's entry (a refusal removes it)."""

        async def trust() -> _Trusted:
            self.auth_lookups += 1
            started = time.monotonic()  # trusted for the TTL from the look-up, not its end
            try:
                actor, expires_in, found = await asyncio.to_thread(
                    self._authenticate, secret, projects
                )
            except Unauthenticated:
                self._auth.pop(key, None)
                raise
            ttl = self.platform.settings.server.auth_cache_ttl_s
            ttl = ttl if expires_in is None else min(ttl, expires_in)
            if len(self._auth) >= AUTH_CACHE_SIZE:
                self._prune()
            trusted = _Trusted(started + ttl, Principal(actor, key[:16], key), found)
            trusted.ttl = ttl
            self._auth[key] = trusted
            return trusted

        flight = asyncio.ensure_future(trust())
        self._flights[key] = flight
        flight.add_done_callback(lambda done: self._landed(key, done))
        return flight

    def _landed(self, key: str, flight: asyncio.Future[_Trusted]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # a refresh nobody awaited must not log "never retrieved"

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._auth.items() if v.until <= now]:
            del self._auth[key]
        while len(self._auth) >= AUTH_CACHE_SIZE:  # all live: drop the oldest entries
            del self._auth[next(iter(self._auth))]

    def _authenticate(
        self, secret: str, projects: tuple[str, ...]
    ) -> tuple[Actor, float | None, dict[str, int]]:
        """The token's actor, the seconds until the token expires (None: never) and the ids of
        those of ``projects`` it may still read."""
        from underlay.errors import UnderlayError
        from underlay.identity import authenticate
        from underlay.store import Scope
        from underlay.store.models import ApiToken
        from underlay.store.types import utcnow

        with self.platform.db.session(Scope.everything()) as session:
            actor = authenticate(session, secret)
            token = session.get(ApiToken, actor.token_id) if actor.token_id else None
            expires = token.expires_at if token is not None else None
        found: dict[str, int] = {}
        for project in projects:
            try:
                found[project] = self._read_project(actor, project)
            except UnderlayError:
                continue  # no longer readable: the next request asks again, and is refused
        return actor, None if expires is None else (expires - utcnow()).total_seconds(), found

    async def _project_id(self, principal: Principal, project: str) -> int:
        """The project's id if the principal may read it; trusted only as long as the
        principal itself, so a removed membership stops working with the token's entry."""
        trusted = self._auth.get(principal.key)
        now = time.monotonic()
        if trusted is not None and trusted.until > now:
            found = trusted.projects.get(project)
            if found is not None:
                return found
        project_id = await asyncio.to_thread(self._read_project, principal.actor, project)
        trusted = self._auth.get(principal.key)
        if trusted is not None and trusted.principal is principal and trusted.until > now:
            trusted.projects[project] = project_id
        return project_id

    def _read_project(self, actor: Actor, project: str) -> int:
        from underlay.identity import read_project

        with self.platform.db.session(actor.scope) as session:
            return read_project(session, project, actor).id

    async def describe(self, project: str, name: str, principal: Principal) -> DeploymentView:
        """The deployment ``name`` of ``project`` if ``principal`` may read the project."""
        await self._project_id(principal, project)
        view = self._views.get((project, name))
        if view is None:
            view = await self._load(project, name)
        return view

    async def _load(self, project: str, name: str) -> DeploymentView:
        self._start()
        assert self._lock is not None
        async with self._lock:
            view = self._views.get((project, name))
            if view is not None:
                return view
            fresh = await asyncio.to_thread(self._read_view, project, name)
            if fresh is None:
                raise NotFound(f"deployment {name[:80]!r} not found")
            self._views[(project, name)] = self._adopt(fresh, None)
            return self._views[(project, name)]

    def _read_view(self, project: str, name: str) -> DeploymentView | None:
        from underlay.serving.snapshot import read_view
        from underlay.store import Scope

        with self.platform.db.session(Scope.everything()) as session:
            return read_view(session, self.platform, project, name)

    def _adopt(self, fresh: DeploymentView, old: DeploymentView | None) -> DeploymentView:
        """Give ``fresh`` batchers, keeping the old view's arms (and their batchers) where the
        version is the same, so a refresh never drops what a batcher holds."""
        old_arms = {a.version: a for a in old.arms()} if old else {}
        for attr in ("stable", "canary", "rolling"):
            arm = getattr(fresh, attr)
            if arm is None:
                continue
            kept = old_arms.pop(arm.version, None)
            if kept is not None:
                for endpoint in arm.endpoints:  # keep what this process learned
                    known = next(
                        (e for e in kept.endpoints if e.replica_id == endpoint.replica_id), None
                    )
                    if known is not None:
                        endpoint.down_until = known.down_until
                kept.endpoints, kept.name = arm.endpoints, arm.name
                kept.batcher.max_concurrency = _in_flight(len(arm.endpoints))
                setattr(fresh, attr, kept)
            else:
                arm.batcher = self._batcher(fresh, arm)
        for gone in old_arms.values():
            asyncio.get_running_loop().create_task(gone.batcher.close())
        return fresh

    def _batcher(self, view: DeploymentView, arm: Arm) -> Any:
        async def run_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return await self._send(view.name, arm, batch)

        stats = self.guards.of(view).stats
        return Batcher(
            run_batch,
            max_batch=view.max_batch,
            max_wait_ms=view.max_wait_ms,
            stats=stats,
            max_concurrency=_in_flight(len(arm.endpoints)),
        )

    # -- predictions ------------------------------------------------------------------------

    async def predict(
        self,
        project: str,
        name: str,
        inputs: dict[str, np.ndarray],
        principal: Principal,
        *,
        request_id: str | None = None,
        validated: bool = False,
    ) -> PredictResult:
        """Run ``inputs`` through the deployment (see the module docstring); ``validated``:
        the caller checked them against ``describe(...).compiled`` already."""
        view = await self.describe(project, name, principal)
        started = time.perf_counter()
        guard = self.guards.of(view)
        arm, status, model_ok = view.stable, 500, True
        try:
            rows = self._validate(view, inputs, validated)
            self.guards.admit(view, principal.token_key, inputs, rows)
            arm = self._choose(view, guard)
            if not arm.endpoints:
                raise Unavailable(
                    f"deployment {name!r} has no ready replica yet; retry shortly",
                    retry_after=RETRY_AFTER_S,
                )
            outputs = await arm.batcher.submit(inputs)
            status = 200
        except ModelFailed as exc:
            status, model_ok = exc.status, False
            raise
        except UnderlayError as exc:
            status = exc.status
            model_ok = status < 500 or isinstance(exc, Unavailable)
            raise
        finally:
            latency = time.perf_counter() - started
            self.guards.observe(guard, view, arm.name, latency, status, model_ok)
        rid = request_id or uuid.uuid4().hex
        self.guards.log(guard, rid, inputs, outputs, latency, arm.version, arm.name)
        return PredictResult(outputs, arm.version, rid)

    @staticmethod
    def _validate(view: DeploymentView, inputs: dict[str, np.ndarray], validated: bool) -> int:
        if view.compiled is not None and not validated:
            return int(v2.validate_inputs(inputs, view.compiled))
        first = next(iter(inputs.values()), None)
        if first is None or first.ndim == 0 or not len(first):
            raise InvalidInput("a request needs at least one input with at least one row")
        return int(first.shape[0])

    @staticmethod
    def _choose(view: DeploymentView, guard: Any) -> Arm:
        canary, monitor = view.canary, guard.monitor
        if (
            canary is not None
            and canary.endpoints
            and monitor is not None
            and monitor.choose(random.random()) == "canary"
        ):
            return canary
        rolling = view.rolling
        if rolling is None or not rolling.endpoints:
            return view.stable
        serving = len(view.stable.endpoints)  # by replica count: each version its share
        chosen = random.random() * (serving + len(rolling.endpoints)) >= serving
        return rolling if chosen else view.stable

    async def _send(
        self, name: str, arm: Arm, batch: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One batch to one replica, retried once on another if the first does not answer."""
        pool = self._pool()
        body = wire.encode(batch)
        tried: set[int] = set()
        for _ in range(2):
            endpoint = arm.pick(tried)
            if endpoint is None:
                break
            tried.add(endpoint.replica_id)
            headers = {SECRET_HEADER: endpoint.secret, "content-type": wire.CONTENT_TYPE}
            host, _, port = endpoint.url.removeprefix("http://").partition(":")
            try:
                status, answer = await pool.post(host, int(port), "/predict", body, headers)
            except ReplicaGone:
                endpoint.down_until = time.monotonic() + DOWN_S
                continue
            if status == 200:
                return wire.decode(answer)
            text = answer[:1000].decode("utf-8", "replace")
            if status in (400, 413):
                raise InvalidInput(text)
            if status == 422:
                raise ModelFailed(text)
            endpoint.down_until = time.monotonic() + DOWN_S
        raise Unavailable(
            f"no replica of deployment {name!r} answered; retry shortly",
            retry_after=RETRY_AFTER_S,
        )

    # -- the JSON route ----------------------------------------------------------------------

    async def predict_json(self, request: Request, project: str, name: str) -> bytes:
        """``POST …/predict`` with ``{"records": [...]}``: the response body."""
        principal = await self.authenticate(request)
        view = await self.describe(project, name, principal)
        try:
            body = parse_json(await request.body())
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict) or set(body) != {"records"}:
            raise InvalidInput('the body must be {"records": [{...}, ...]}')
        if view.compiled is None:
            raise InvalidInput(
                f"model {view.model!r} version {view.version} has no signature: use the V2 "
                "route with named tensors"
            )
        inputs = v2.records_to_inputs(body["records"], view.compiled)
        request_id = getattr(request.state, "request_id", None)
        result = await self.predict(
            project, name, inputs, principal, request_id=request_id, validated=True
        )
        return json.dumps(
            {
                "predictions": predictions_json(result.outputs),
                "model_version": result.version,
                "request_id": result.request_id,
            }
        ).encode()

    # -- refresh and shutdown ------------------------------------------------------------------

    def _pool(self) -> ReplicaPool:
        if self._replicas is None:
            self._replicas = ReplicaPool()
        return self._replicas

    def _start(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except UnderlayError:
                continue

    async def refresh(self) -> None:
        """Reload every cached deployment whose generation changed; forget removed ones."""
        from underlay.serving.snapshot import generations

        while self._retired:
            retired = self._retired.pop()
            for arm in retired.arms():
                await arm.batcher.close()
        if not self._views:
            return
        ids = {key: view.id for key, view in self._views.items()}
        current = await asyncio.to_thread(self._generations, list(ids.values()), generations)
        for key, view in list(self._views.items()):
            now = current.get(view.id)
            if now is None:
                self._views.pop(key, None)
                self.guards.forget(view.id)
                for arm in view.arms():
                    await arm.batcher.close()
            elif now != view.generation:
                fresh = await asyncio.to_thread(self._read_view, *key)
                if fresh is None:
                    self._views.pop(key, None)
                else:
                    self._views[key] = self._adopt(fresh, view)

    def _generations(self, ids: list[int], read: Callable[..., dict[int, int]]) -> dict[int, int]:
        from underlay.store import Scope

        with self.platform.db.session(Scope.everything()) as session:
            return read(session, ids)

    def forget(self, project: str, name: str) -> None:
        """Drop a cached view at once (this process changed or removed the deployment); its
        batchers finish what they hold and are closed by the next refresh."""
        view = self._views.pop((project, name), None)
        if view is not None:
            self._retired.append(view)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for view in self._views.values():
            for arm in view.arms():
                await arm.batcher.close()
        if self._replicas is not None:
            await self._replicas.close()
        await asyncio.to_thread(self.guards.close)


def predictions_json(outputs: dict[str, np.ndarray]) -> list[Any]:
    """One output: its rows as a list; several: one object per row."""
    if len(outputs) == 1:
        result: list[Any] = next(iter(outputs.values())).tolist()
        return result
    lists = {k: v.tolist() for k, v in outputs.items()}
    count = len(next(iter(lists.values()))) if lists else 0
    return [{k: v[i] for k, v in lists.items()} for i in range(count)]


def dataplane_of(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane
