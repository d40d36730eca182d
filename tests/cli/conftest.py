"""Helpers for driving the real faces as processes: ``underlay up`` and client commands.

:class:`ServerProcess` runs ``python -m underlay.cli.main up`` on a given home folder and can
stop it politely or SIGKILL it (the crash test). :func:`run_cli` runs one CLI command in a
child process with an environment that holds only the ``UNDERLAY_*`` variables the test gives,
so a developer's own profile or server never leaks into a test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, free_port

CLI = [sys.executable, "-m", "underlay.cli.main"]


def clean_env(**underlay: str) -> dict[str, str]:
    """The test process's environment without any UNDERLAY_* variable, plus ``underlay``.

    Client profiles live under ``XDG_CONFIG_HOME``: unless the test gives one, it is a folder
    beside ``UNDERLAY_HOME`` (or one that does not exist), never the developer's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERLAY_")}
    home = underlay.get("UNDERLAY_HOME")
    env["XDG_CONFIG_HOME"] = f"{home}-config" if home else "/nonexistent/underlay-test-config"
    env.update(underlay)
    return env


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``underlay <args>`` and return what it printed and its exit status."""
    return subprocess.run(
        [*CLI, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerProcess:
    """``underlay up`` as a child process on ``home``; its output goes to ``log_path``."""

    def __init__(
        self,
        home: Path,
        *args: str,
        admin_token: str | None = ADMIN_TOKEN,
        port: int | None = None,
    ) -> None:
        self.home = home
        self.args = args
        self.admin_token = admin_token or ""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def extra_env(self) -> dict[str, str]:
        """More environment for the server process (subclasses add settings here)."""
        return {}

    def start(self, ready_within_s: float = 90) -> ServerProcess:
        env = clean_env(UNDERLAY_HOME=str(self.home), **self.extra_env())
        if self.admin_token:
            env["UNDERLAY_ADMIN_TOKEN"] = self.admin_token
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "up", "--port", str(self.port), *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_within_s
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server not ready in {ready_within_s} s:\n{self.output()}")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL after 60 s); returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
