"""How the local executor isolates user code from the platform and from other attempts.

User code is hostile (DESIGN.md, invariant 6). An attempt must not see the platform's home
(keys, database, the agent's token), the server's or the agent's processes, or another
attempt's files. Which tools a node has decides the mode, chosen once when the executor starts
(``compute.isolation = "auto"``) and reported by the agent, so ``underlay nodes ls`` shows it:

``namespaces+user`` (the agent runs as root and may create namespaces)
    PID, mount, IPC and UTS namespaces: the job is alone in its PID namespace, the hidden
    paths are empty read-only folders, its ``/tmp`` is private; and the job runs as an
    unprivileged uid of its own project (``sandbox_uid_base + project id``, or the fixed
    ``sandbox_uid``), with no supplementary groups and ``no_new_privs``.
``namespaces`` (not root, but unprivileged user namespaces work)
    The same namespaces inside a user namespace that maps only the agent's own uid; the job
    keeps that uid but holds no capability outside, and the hidden paths are gone.
``user`` (root without namespaces, e.g. a container without CAP_SYS_ADMIN)
    Only the uid drop: file modes (the home is 0700) and the kernel's ptrace rules keep the job
    out. Working folders live in a separate 0711 folder the job's uid can reach.
``none``
    Nothing: the job runs as the agent's user. ``underlay up`` says so at start-up and
    ``nodes ls`` shows it; with ``compute.require_isolation`` the executor refuses to run jobs.

``docs/security.md`` has the threat model: what a job can and cannot reach in each mode.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from underlay.compute.executors import shim
from underlay.config import ComputeSettings

log = logging.getLogger(__name__)
Mode = Literal["namespaces+user", "namespaces", "user", "none"]
MODES: tuple[Mode, ...] = ("namespaces+user", "namespaces", "user", "none")
SHIM_PATH = Path(shim.__file__)


@dataclass(frozen=True)
class Isolation:
    """The mode an executor runs attempts in, and what the sandbox hides and exposes."""

    mode: Mode = "none"
    hide: tuple[Path, ...] = ()
    expose: tuple[Path, ...] = ()
    uid: int | None = None  # a fixed uid for every job (user modes)
    uid_base: int = 200_000  # else one uid per project: uid_base + project id % uid_count
    uid_count: int = 100_000
    required: bool = False
    reason: str = ""  # why this mode (shown at start-up)
    work_root: Path | None = field(default=None)  # ``user`` mode: where working folders live
    share: tuple[Path, ...] = ()  # folders every job may read and write (namespace modes)

    @property
    def namespaces(self) -> bool:
        return self.mode in ("namespaces+user", "namespaces")

    @property
    def drops_uid(self) -> bool:
        return self.mode in ("namespaces+user", "user")

    @property
    def isolated(self) -> bool:
        return self.mode != "none"

    def uid_for(self, project_id: int | None) -> int | None:
        """The uid a job of ``project_id`` runs as, or None where the uid is not changed."""
        if not self.drops_uid:
            return None
        if self.uid is not None:
            return self.uid
        return self.uid_base + (project_id or 0) % self.uid_count

    def sandbox(self, workdir: Path, project_id: int | None) -> dict[str, object] | None:
        """The shim's ``--sandbox`` object for one attempt, or None in mode ``none``."""
        if not self.isolated:
            return None
        uid = self.uid_for(project_id)
        return {
            "namespaces": self.namespaces,
            "userns": self.mode == "namespaces",
            "uid": uid,
            "gid": uid,
            "hide": [str(p) for p in self.hide],
            "expose": [str(p) for p in self.expose],
            "share": [str(p) for p in self.share],
            "workdir": str(workdir),
        }

    def describe(self) -> str:
        if self.isolated:
            return f"jobs run isolated ({self.mode}): {self.reason}"
        return f"jobs are NOT isolated: {self.reason}"


def default_hidden(home: Path, run_dir: Path, extra: tuple[Path, ...] = ()) -> tuple[Path, ...]:
    """What a job must never see: the platform's home, the agent's run folder, the agent
    user's own home (its CLI profile holds a token), and whatever the operator adds."""
    paths = [home, run_dir, Path.home(), *extra]
    return tuple(dict.fromkeys(p.resolve() for p in paths if str(p.resolve()) != "/"))


def default_exposed(extra: tuple[Path, ...] = ()) -> tuple[Path, ...]:
    """What jobs need even when it lies under a hidden path (or under ``/tmp``, which is
    private in the sandbox), read-only: the Python runtime, this package's own code (an
    editable install lives in a checkout) and the agent's import path, which a job's Python
    shares."""
    import underlay

    paths = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.executable).resolve().parent,
        Path(underlay.__file__).resolve().parent.parent,
        *(Path(p) for p in sys.path if p and Path(p).is_absolute() and Path(p).is_dir()),
        *extra,
    ]
    return tuple(dict.fromkeys(p.resolve() for p in paths))


def _outside(exposed: tuple[Path, ...], hidden: tuple[Path, ...]) -> tuple[Path, ...]:
    """Drop any exposed path that would bring back a hidden one (itself or a folder above)."""
    return tuple(p for p in exposed if not any(h == p or h.is_relative_to(p) for h in hidden))


def choose(
    wanted: Literal["auto", "namespaces+user", "namespaces", "user", "none"],
    *,
    hide: tuple[Path, ...],
    expose: tuple[Path, ...],
    uid: int | None = None,
    uid_base: int = 200_000,
    uid_count: int = 100_000,
    required: bool = False,
    share: tuple[Path, ...] = (),
) -> Isolation:
    """The strongest mode this machine supports (``auto``), or ``wanted`` if it works here;
    a mode that was asked for and does not work falls back with the reason logged."""
    root = os.geteuid() == 0
    candidates: list[Mode]
    if wanted == "auto":
        candidates = ["namespaces+user", "user"] if root else ["namespaces"]
    else:
        candidates = [wanted]
    expose = _outside(expose, hide)
    reasons: list[str] = []
    for mode in candidates:
        if mode == "none":
            break
        ok, why = _works(mode, root)
        if ok:
            base = Isolation(mode, hide, expose, uid, uid_base, uid_count, required, why)
            base = replace(base, share=share)
            return base if mode != "user" else _with_work_root(base)
        reasons.append(f"{mode}: {why}")
    reason = "; ".join(reasons) or "isolation turned off by compute.isolation = none"
    return Isolation("none", hide, expose, uid, uid_base, uid_count, required, reason)


def _works(mode: Mode, root: bool) -> tuple[bool, str]:
    if mode in ("namespaces+user", "user") and not root:
        return False, "needs the agent to run as root (to switch jobs to another uid)"
    if mode == "namespaces" and root:
        return False, "as root, use namespaces+user (a root job could undo its mounts)"
    if mode == "user":
        return True, "jobs run as an unprivileged uid per project (no namespaces here)"
    error = _probe(mode)
    if error:
        return False, f"this machine refused: {error}"
    if mode == "namespaces":
        return True, "user, PID and mount namespaces; jobs keep the agent's uid"
    return True, "PID and mount namespaces, and an unprivileged uid per project"


@functools.cache
def _probe(mode: Mode) -> str:
    """'' if the shim can set up ``mode``'s sandbox here, else the reason."""
    spec: dict[str, object] = {"namespaces": True, "userns": mode == "namespaces"}
    if mode == "namespaces+user":
        spec["uid"] = 65534
    try:
        done = subprocess.run(
            [sys.executable, "-I", str(SHIM_PATH), "--probe", json.dumps(spec)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    return done.stderr.decode(errors="replace").strip()[-300:] or f"exit {done.returncode}"


def _with_work_root(isolation: Isolation) -> Isolation:
    """``user`` mode: working folders in a 0711 folder outside the (0700) home."""
    digest = hashlib.sha256(str(isolation.hide[:2]).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"underlay-work-{digest}"
    try:
        root.mkdir(mode=0o711, exist_ok=True)
        info = root.lstat()
    except OSError as exc:
        raise RuntimeError(f"cannot create the jobs' work folder {root}: {exc}") from exc
    if root.is_symlink() or info.st_uid != os.geteuid():
        raise RuntimeError(f"{root} exists and is not this user's folder; remove it")
    root.chmod(0o711)
    return replace(isolation, work_root=root)


def from_settings(compute: ComputeSettings, home: Path, run_dir: Path) -> Isolation:
    """The isolation of this node from ``settings.compute``."""
    hide = default_hidden(home, run_dir, tuple(compute.sandbox_hide))
    return choose(
        compute.isolation,
        hide=hide,
        expose=default_exposed(tuple(compute.sandbox_expose)),
        uid=compute.sandbox_uid,
        uid_base=compute.sandbox_uid_base,
        uid_count=compute.sandbox_uid_count,
        required=compute.require_isolation,
        share=tuple(p.resolve() for p in compute.sandbox_share),
    )
