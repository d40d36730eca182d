"""What a server process runs besides answering requests: the scheduling loop, the timed audit
checkpoints, and the node agent of this machine (which talks to this very server over HTTP, as
a remote agent would).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from underlay import identity
from underlay.agent import NodeAgent, node_executor
from underlay.audit_checkpoints import CheckpointLoop
from underlay.compute.loop import SchedulerLoop
from underlay.config import write_secret_file
from underlay.errors import Unauthenticated
from underlay.identity import TokenKind
from underlay.platform import Platform
from underlay.store import Scope

log = logging.getLogger(__name__)


def agent_token(platform: Platform, node: str) -> str:
    """The local agent's token: an ``agent`` token for ``node`` (it can do nothing but speak
    for this node), created once and kept 0600 in the home. A saved token that no longer
    authenticates as this node's agent (an older version's admin token) is replaced."""
    path: Path = platform.settings.home / "agent.token"
    if path.exists():
        secret = path.read_text().strip()
        with platform.db.session(Scope.everything()) as session:
            try:
                actor = identity.authenticate(session, secret)
            except Unauthenticated:
                actor = None
        if actor is not None and actor.kind is TokenKind.agent and actor.node == node:
            return secret
        path.unlink(missing_ok=True)
    with platform.db.session(Scope.everything()) as session:
        token, secret = identity.create_agent_token(session, node)
        platform.audit.append(
            session,
            actor="system",
            action="token.create",
            resource=f"user:{identity.AGENT_USER}/token:{token.name}",
            outcome="ok",
            detail={"kind": "agent", "node": node},
        )
    if not write_secret_file(path, secret.encode(), overwrite=False):
        return path.read_text().strip()  # another worker was first; its token is saved
    return secret


class ComputeRuntime:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.loop = SchedulerLoop(
            platform.db, platform.audit, platform.settings, platform.public_url
        )
        self.audit_loop = CheckpointLoop(
            platform.audit, platform.settings.security.audit_checkpoint_interval_s
        )
        self.agent_thread: threading.Thread | None = None
        self._agent: NodeAgent | None = None

    def start(self) -> None:
        self.platform.wakers.append(self.loop.wake)
        self.loop.start()
        self.audit_loop.start()
        if self.platform.settings.compute.local_agent:
            self._start_agent()

    def _start_agent(self) -> None:
        from underlay.client import Client

        settings = self.platform.settings
        name = settings.compute.node_name or socket.gethostname()
        run_dir = settings.home / "agent" / name
        token = agent_token(self.platform, name)
        # the agent's loop backs off on its own while the server is away: no retries within calls
        client = Client(self.platform.public_url, token, verify=False, retry_budget_s=0)
        executor = node_executor(settings, run_dir, name)
        log.log(
            logging.INFO if executor.isolation.isolated else logging.WARNING,
            "node %s: %s",
            name,
            executor.isolation.describe(),
        )
        agent = NodeAgent(client, settings, executor, name, run_dir)
        self._agent = agent
        self.agent_thread = threading.Thread(target=agent.run, name="underlay-agent", daemon=True)
        self.agent_thread.start()

    def stop(self, stop_jobs: Callable[[], set[int]] | None = None) -> set[int]:
        """Stop the loops and the local agent; the attempts the agent runs of the jobs
        ``stop_jobs()`` names (serving replicas: they must not outlive their server) are
        stopped too, and waited for. Returns the ids of the jobs it stopped."""
        stopped: set[int] = set()
        if self._agent is not None:
            self._agent.stop()
        if self.agent_thread is not None:
            self.agent_thread.join(10)
        if self._agent is not None:
            if stop_jobs is not None and not self._agent_running():
                grace = self.platform.settings.compute.grace_s
                stopped = self._agent.stop_jobs(stop_jobs(), "the server stopped", grace)
            self._agent.client.close()
            self._agent.executor.close()
        self.loop.stop()
        self.audit_loop.stop()
        return stopped

    def _agent_running(self) -> bool:
        return self.agent_thread is not None and self.agent_thread.is_alive()
