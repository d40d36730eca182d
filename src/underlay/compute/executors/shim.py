"""The per-attempt shim: the process the local executor starts, which starts the job.

Usage::

    python -m underlay.compute.executors.shim --status FILE [--cpus 0,1] [--cgroup DIR] \\
        [--sandbox JSON] -- COMMAND...
    python -m underlay.compute.executors.shim --probe JSON

Like ``containerd-shim``, it sits between the agent and the job so that the job's end outlives
the agent: it is the session leader the executor watches (by pid and start time), it starts
COMMAND as its only child in a process group of its own, forwards SIGTERM (and SIGINT, SIGHUP)
to that whole group, waits, kills whatever is left in the group once the child has ended, and
writes how the child ended to FILE atomically (temporary name, then rename). An agent that
restarted reads FILE to learn the end of an attempt it did not spawn. The child asks the kernel
to SIGKILL it should the shim die (``PR_SET_PDEATHSIG``): an attempt whose shim vanished counts
as lost and may be retried, so it must not keep running.

It inherits its working directory, environment and stdout/stderr (the job's log) from the
executor and passes them on. ``--cpus`` pins the child (and so its tree) to those CPUs;
``--cgroup`` makes the child join that cgroup v2 directory before it runs COMMAND, so the
kernel's memory limit covers the job but not the shim, which must live to write FILE.

It starts once per job, so it imports only the standard library and nothing of underlay; the
executor runs it by file path with ``python -I`` so no package ``__init__`` runs either.

**The sandbox** (``--sandbox``, see :func:`Sandbox.from_json`; ``docs/security.md`` has the
threat model). In the ``namespaces`` modes the shim unshares a PID namespace (and, when it is
not root, a user namespace mapping only its own uid) before it forks, so the child is PID 1 of
a namespace of its own: it sees no process of the host, the server or another attempt. That
child, the *init*, unshares a mount namespace, makes every mount private, covers each hidden
path (the platform's home, the agent's run folder, the agent user's home...) with an empty
read-only tmpfs, binds back under them only what the job needs (its own working folder
read-write; the Python runtime read-only), gives the job a private ``/tmp`` and a ``/proc``
of the new namespace, and then forks the job. The init forwards SIGTERM/SIGINT/SIGHUP to
everything in the namespace (PID 1 gets no signal it has no handler for, so it must be there),
reaps orphans, and when the job ends tells the shim its exit code or signal over a pipe and
exits, which makes the kernel kill whatever the job left in the namespace. In the ``user``
modes the job itself drops to an unprivileged uid/gid (no supplementary groups) before exec,
with ``PR_SET_NO_NEW_PRIVS`` so no setuid program can give privileges back.

FILE is JSON: ``exit_code`` (int or null), ``signal`` (the number that killed the child, or
null), ``error`` (why COMMAND could not be started, or null), ``cpu_s`` (user + system CPU
seconds of every waited-for descendant, from ``getrusage(RUSAGE_CHILDREN)``), ``max_rss_kib``
(the largest single descendant's peak) and ``ended`` (epoch seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXEC_FAILED = 127  # what shells return when a command cannot be run
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNS = 0x00020000  # from <linux/sched.h>
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8  # from <linux/mount.h>
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


class SandboxError(Exception):
    """The sandbox could not be set up; the job is not started."""


class Sandbox:
    """How to confine one job; parsed from ``--sandbox`` JSON written by the executor.

    ``namespaces``: PID + mount (+ IPC, UTS) namespaces; ``userns``: also a user namespace
    (when the shim is not root); ``uid``/``gid``: drop to them before exec (root only);
    ``hide``: paths covered by an empty read-only tmpfs; ``expose``: paths under a hidden one
    bound back read-only; ``share`` and ``workdir``: bound back read-write.
    """

    def __init__(self, spec: dict[str, object]) -> None:
        self.namespaces = bool(spec.get("namespaces"))
        self.userns = bool(spec.get("userns"))
        uid, gid = spec.get("uid"), spec.get("gid")
        self.uid = int(uid) if isinstance(uid, int) else None
        self.gid = int(gid) if isinstance(gid, int) else self.uid
        self.hide = _strings(spec.get("hide"))
        self.expose = _strings(spec.get("expose"))
        self.share = _strings(spec.get("share"))
        self.workdir = str(spec.get("workdir") or "")

    @classmethod
    def from_json(cls, text: str) -> Sandbox:
        spec = json.loads(text)
        if not isinstance(spec, dict):
            raise ValueError("--sandbox takes a JSON object")
        return cls(spec)

    def unshare_for_children(self) -> None:
        """In the shim, before fork: the child will be PID 1 of a new PID namespace."""
        if not self.namespaces:
            return
        uid, gid = os.getuid(), os.getgid()
        _unshare(CLONE_NEWPID | (CLONE_NEWUSER if self.userns else 0))
        if self.userns:  # map only ourselves: the job gets no uid it does not own outside
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")

    def confine(self) -> None:
        """In the init (PID 1 of the new namespace), before it forks the job."""
        if not self.namespaces:
            return
        _unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
        umask = os.umask(0o022)  # the folders leading to what is bound back must be traversable
        try:
            self._cover_and_bind()
        finally:
            os.umask(umask)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if self.workdir:
            os.chdir(self.workdir)

    def _cover_and_bind(self) -> None:
        # /tmp first: a private, writable one; then the hidden paths (empty and read-only).
        # A path below one already covered is covered with it.
        tops: list[tuple[str, bool]] = [("/tmp", True)]  # noqa: S108
        for path in sorted({os.path.realpath(p) for p in self.hide if os.path.lexists(p)}, key=len):
            if not any(_below(path, top) for top, _ in tops):
                tops.append((path, False))
        keep = [(p, False) for p in self.expose if os.path.exists(p)]  # noqa: PTH110
        keep += [(p, True) for p in self.share if os.path.isdir(p)]  # noqa: PTH112
        if self.workdir:
            keep.append((self.workdir, True))
        handles = {path: os.open(path, os.O_PATH) for path, _ in keep}
        try:
            for top, writable in tops:
                if not os.path.isdir(top):  # noqa: PTH112
                    _mount("/dev/null", top, None, MS_BIND)
                    continue
                mode = "mode=1777" if writable else "mode=0755,size=1m"
                _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, mode)
                for path, rw in keep:
                    real = os.path.realpath(path)
                    if real == top or _below(real, top):
                        _bind(handles[path], real, writable=rw)
                if not writable:
                    flags = MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
                    _mount(None, top, None, flags, mode)
        finally:
            for handle in handles.values():
                os.close(handle)

    def drop_privileges(self) -> None:
        """In the job, just before exec."""
        if self.uid is not None and os.getuid() == 0:
            os.setgroups([])
            os.setgid(self.gid if self.gid is not None else self.uid)
            os.setuid(self.uid)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _below(path: str, top: str) -> bool:
    return path.startswith(top.rstrip("/") + "/")


def _libc() -> object:
    import ctypes  # only where a sandbox is used: the shim stays cheap to start otherwise

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(errno)}")


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags), f"unshare({flags:#x})")  # type: ignore[attr-defined]


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    enc = [v.encode() if v is not None else None for v in (source, target, fstype, data)]
    result = _libc().mount(enc[0], enc[1], enc[2], flags, enc[3])  # type: ignore[attr-defined]
    _check(result, f"mount {target}")


def _bind(handle: int, target: str, *, writable: bool) -> None:
    """Bind the folder open as ``handle`` (hidden by now) to ``target`` inside a tmpfs."""
    os.makedirs(target, mode=0o755, exist_ok=True)  # noqa: PTH103
    _mount(f"/proc/self/fd/{handle}", target, None, MS_BIND | MS_REC)
    if not writable:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _prctl(option: int, value: int) -> None:
    if sys.platform == "linux":
        _check(_libc().prctl(option, value, 0, 0, 0), f"prctl({option})")  # type: ignore[attr-defined]


def _write(path: str, text: str) -> None:
    with open(path, "w") as out:  # noqa: PTH123
        out.write(text)


class Shim:
    """One attempt: start the child, forward signals to its group, record its end."""

    def __init__(self, status: str, command: list[str], sandbox: Sandbox | None = None) -> None:
        self.status = status
        self.command = command
        self.sandbox = sandbox
        self.child = 0
        self.pending: int | None = None  # a signal that arrived before the child existed
        self.report_fd: int | None = None  # sandboxed: the init reports the job's end here

    def forward(self, signum: int, _frame: object) -> None:
        if self.child:
            with contextlib.suppress(ProcessLookupError):  # the group is already gone
                os.killpg(self.child, signum)
        else:
            self.pending = signum

    def spawn(self, cgroup: str | None) -> str | None:
        """Fork and exec the child in its own process group; the exec error, if any."""
        read_end, write_end = os.pipe()  # close-on-exec: EOF means exec succeeded
        # With namespaces the child is the init of the job's PID namespace (see init());
        # without, it is the job itself (dropping to its uid in the user mode).
        init = self.sandbox if self.sandbox is not None and self.sandbox.namespaces else None
        report_read, report_write = os.pipe() if init else (-1, -1)
        shim_pid = os.getpid()
        if init is not None:
            try:
                init.unshare_for_children()
            except (SandboxError, OSError) as exc:
                return f"cannot set up the sandbox: {exc}"
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                os.setpgid(0, 0)
                die_with(shim_pid, in_new_pid_namespace=init is not None)
                for signum in (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(signum, signal.SIG_DFL)  # Python ignores PIPE and XFSZ
                if cgroup:
                    join_cgroup(cgroup)
                if init is not None:
                    os.close(report_read)
                    os._exit(self.init(init, write_end, report_write))
                if self.sandbox is not None:
                    self.sandbox.drop_privileges()
                os.execvp(self.command[0], self.command)  # noqa: S606 (argv, no shell)
            except (OSError, SandboxError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                os.write(write_end, f"cannot run {self.command[0]}: {reason}".encode())
            os._exit(EXEC_FAILED)
        os.close(write_end)
        if init is not None:
            os.close(report_write)
            self.report_fd = report_read
        # Also here, so the group exists before we signal it; fails harmlessly once the
        # child has set it itself and exec'd.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        self.child = pid
        with os.fdopen(read_end, "rb") as pipe:
            error = pipe.read().decode(errors="replace")
        if self.pending is not None:
            self.forward(self.pending, None)
        return error or None

    def init(self, sandbox: Sandbox, error_fd: int, report_fd: int) -> int:
        """PID 1 of the job's namespace: confine, start the job, forward signals, reap, and
        report the job's end on ``report_fd``. Returns the init's own exit code."""
        try:
            if os.getpid() != 1:  # kill(-1) below must only ever reach this namespace
                raise SandboxError("the init is not PID 1 of a namespace of its own")
            sandbox.confine()
        except (SandboxError, OSError) as exc:
            os.write(error_fd, f"cannot set up the sandbox: {exc}".encode())
            return EXEC_FAILED
        _prctl(PR_SET_DUMPABLE, 0)  # the job may not ptrace or read its (privileged) init
        job = os.fork()
        if job == 0:
            try:
                os.setpgid(0, 0)
                die_with(1, in_new_pid_namespace=False)
                sandbox.drop_privileges()
                os.execvp(self.command[0], self.command)  # noqa: S606 (argv, no shell)
            except (OSError, SandboxError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                os.write(error_fd, f"cannot run {self.command[0]}: {reason}".encode())
            os._exit(EXEC_FAILED)
        os.close(error_fd)

        def relay(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signum)  # from PID 1: every process of the namespace

        for forwarded in FORWARDED:
            signal.signal(forwarded, relay)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return 0
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            if pid == job:
                break
        if os.WIFEXITED(status):
            report = f"exit {os.WEXITSTATUS(status)}"
        else:
            report = f"signal {os.WTERMSIG(status)}"
        os.write(report_fd, report.encode())
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # what the job left behind; the kernel would anyway
        return 0

    def wait(self) -> tuple[int | None, int | None]:
        """Wait for the child, kill the rest of its group, reap it: (exit code, signal)."""
        info = os.waitid(os.P_PID, self.child, os.WEXITED | os.WNOWAIT)
        # The unreaped child keeps its pid (and so the group id) from being reused, which
        # makes this killpg safe: it reaches only what the job left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child, signal.SIGKILL)
        os.waitpid(self.child, 0)
        if self.report_fd is not None:  # the init's word on how the job itself ended
            with os.fdopen(self.report_fd, "rb") as pipe:
                report = pipe.read().decode(errors="replace").split()
            if len(report) == 2 and report[1].isdigit():
                value = int(report[1])
                return (value, None) if report[0] == "exit" else (None, value)
        if info is not None and info.si_code == os.CLD_EXITED:
            return info.si_status, None
        return None, info.si_status if info is not None else None

    def run(self, cpus: set[int] | None, cgroup: str | None) -> int:
        for forwarded in FORWARDED:
            signal.signal(forwarded, self.forward)
        exit_code: int | None = None
        signum: int | None = None
        error: str | None = None
        try:
            if cpus:
                os.sched_setaffinity(0, cpus)  # inherited by the child and its whole tree
        except OSError as exc:
            error = f"cannot pin to CPUs {sorted(cpus or ())}: {exc.strerror}"
        if self.pending is not None:
            error, signum = "stopped before it started", self.pending
        elif error is None:
            error = self.spawn(cgroup)
            if self.child:
                exit_code, signum = self.wait()
        if error:
            print(f"underlay: {error}", file=sys.stderr, flush=True)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        record = {
            "exit_code": exit_code,
            "signal": signum,
            "error": error,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_kib": usage.ru_maxrss,
            "ended": time.time(),
        }
        write_atomically(self.status, json.dumps(record))
        return 0


def die_with(parent: int, *, in_new_pid_namespace: bool) -> None:
    """Have the kernel SIGKILL this process when ``parent`` (the shim) dies: without its shim
    the agent counts the attempt as lost and may retry it, and it must not run twice.

    PID 1 of a new PID namespace sees its parent (outside) as pid 0, so there the check that
    the parent is still the one we had becomes "still has a parent"."""
    if sys.platform == "linux":
        import ctypes  # only here: in the forked child, before exec

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    expected = 0 if in_new_pid_namespace else parent
    if os.getppid() != expected:  # the shim died before the request took effect
        os._exit(EXEC_FAILED)


def join_cgroup(cgroup: str) -> None:
    """Move the calling process into ``cgroup``; a failure is reported in the job's log only:
    the executor's memory watchdog still applies."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:  # noqa: PTH118, PTH123
            procs.write("0")
    except OSError as exc:
        print(f"underlay: could not join {cgroup}: {exc.strerror}", file=sys.stderr, flush=True)


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary name and a rename: readers see all or none."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as out:  # noqa: PTH123
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)  # noqa: PTH105 (pathlib is not imported at start-up)


OPTIONS = ("--status", "--cpus", "--cgroup", "--sandbox")


def parse(argv: list[str]) -> tuple[str, set[int] | None, str | None, Sandbox | None, list[str]]:
    """``--status FILE [--cpus LIST] [--cgroup DIR] [--sandbox JSON] -- COMMAND...``; exits 2
    when malformed."""
    options: dict[str, str] = {}
    rest = list(argv)
    while rest and rest[0] != "--":
        if len(rest) < 2 or rest[0] not in OPTIONS:
            sys.exit(f"underlay shim: unexpected argument {rest[0]!r}; see the module docstring")
        options[rest[0]] = rest[1]
        rest = rest[2:]
    command = rest[1:]
    if "--status" not in options or not command:
        sys.exit("usage: shim --status FILE [--cpus 0,1] [--cgroup DIR] [--sandbox JSON] -- CMD")
    cpus = {int(c) for c in options["--cpus"].split(",")} if options.get("--cpus") else None
    sandbox = Sandbox.from_json(options["--sandbox"]) if options.get("--sandbox") else None
    return options["--status"], cpus, options.get("--cgroup"), sandbox, command


def probe(spec: str) -> int:
    """Exit 0 if a sandbox like ``spec`` can be set up here (and a job started in it), else
    print why and exit 1. The executor runs this once to choose its isolation mode."""
    sandbox = Sandbox.from_json(spec)
    try:
        sandbox.unshare_for_children()
    except (SandboxError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    pid = os.fork()
    if pid == 0:
        try:
            sandbox.confine()
            if os.fork() == 0:
                sandbox.drop_privileges()
                os._exit(0)
            _, status = os.wait()
            os._exit(os.waitstatus_to_exitcode(status))
        except (SandboxError, OSError) as exc:
            print(exc, file=sys.stderr, flush=True)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return 0 if os.waitstatus_to_exitcode(status) == 0 else 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--probe":
        return probe(argv[1])
    status, cpus, cgroup, sandbox, command = parse(argv)
    return Shim(status, command, sandbox).run(cpus, cgroup)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
