"""What a server process runs besides answering requests: the scheduling loop, the timed audit
checkpoints, and the node agent of this machine (which talks to this very server over HTTP, as
a remote agent would).
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from sqlalchemy import select

from underlay import identity
from underlay.audit_checkpoints import CheckpointLoop
from underlay.compute.agent import NodeAgent
from underlay.compute.loop import SchedulerLoop
from underlay.config import write_secret_file
from underlay.platform import Platform
from underlay.store import Scope
from underlay.store.models import User

log = logging.getLogger(__name__)
AGENT_USER = "agent"


def agent_token(platform: Platform) -> str:
    """The local agent's token: created once (user ``agent``, a global admin), kept 0600."""
    path: Path = platform.settings.home / "agent.token"
    if path.exists():
        return path.read_text().strip()
    with platform.db.session(Scope.everything()) as session:
        user = session.scalar(select(User).where(User.name == AGENT_USER))
        if user is None:
            user = identity.create_user(session, AGENT_USER, is_admin=True)
        _, secret = identity.create_token(session, user, "local-agent", expires_in_days=None)
        platform.audit.append(
            session,
            actor="system",
            action="token.create",
            resource=f"user:{AGENT_USER}/token:local-agent",
            outcome="ok",
        )
    if not write_secret_file(path, secret.encode(), overwrite=False):
        return path.read_text().strip()  # another worker was first; its token is saved
    return secret


class ComputeRuntime:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.loop = SchedulerLoop(platform.db, platform.audit, platform.settings)
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
        from underlay.compute.executors.local import LocalExecutor

        settings = self.platform.settings
        name = settings.compute.node_name or socket.gethostname()
        run_dir = settings.home / "agent" / name
        client = Client(self.platform.public_url, agent_token(self.platform), verify=False)
        executor = LocalExecutor(run_dir / "status", grace_s=settings.compute.grace_s)
        agent = NodeAgent(client, settings, executor, name, run_dir)
        self._agent = agent
        self.agent_thread = threading.Thread(target=agent.run, name="underlay-agent", daemon=True)
        self.agent_thread.start()

    def stop(self) -> None:
        if self._agent is not None:
            self._agent.stop()
        if self.agent_thread is not None:
            self.agent_thread.join(10)
        if self._agent is not None:
            self._agent.client.close()
        self.loop.stop()
        self.audit_loop.stop()
