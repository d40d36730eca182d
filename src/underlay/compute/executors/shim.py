"""The per-attempt shim: the process the local executor starts, which starts the job.

Usage::

    python -m underlay.compute.executors.shim --status FILE [--cpus 0,1] [--cgroup DIR] \\
        -- COMMAND...

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


class Shim:
    """One attempt: start the child, forward signals to its group, record its end."""

    def __init__(self, status: str, command: list[str]) -> None:
        self.status = status
        self.command = command
        self.child = 0
        self.pending: int | None = None  # a signal that arrived before the child existed

    def forward(self, signum: int, _frame: object) -> None:
        if self.child:
            with contextlib.suppress(ProcessLookupError):  # the group is already gone
                os.killpg(self.child, signum)
        else:
            self.pending = signum

    def spawn(self, cgroup: str | None) -> str | None:
        """Fork and exec the child in its own process group; the exec error, if any."""
        read_end, write_end = os.pipe()  # close-on-exec: EOF means exec succeeded
        shim_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                os.setpgid(0, 0)
                die_with(shim_pid)
                for signum in (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(signum, signal.SIG_DFL)  # Python ignores PIPE and XFSZ
                if cgroup:
                    join_cgroup(cgroup)
                os.execvp(self.command[0], self.command)  # noqa: S606 (argv, no shell)
            except OSError as exc:
                os.write(write_end, f"cannot run {self.command[0]}: {exc.strerror}".encode())
            os._exit(EXEC_FAILED)
        os.close(write_end)
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

    def wait(self) -> tuple[int | None, int | None]:
        """Wait for the child, kill the rest of its group, reap it: (exit code, signal)."""
        info = os.waitid(os.P_PID, self.child, os.WEXITED | os.WNOWAIT)
        # The unreaped child keeps its pid (and so the group id) from being reused, which
        # makes this killpg safe: it reaches only what the job left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child, signal.SIGKILL)
        os.waitpid(self.child, 0)
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


def die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` (the shim) dies: without its shim
    the agent counts the attempt as lost and may retry it, and it must not run twice."""
    if sys.platform == "linux":
        import ctypes  # only here: in the forked child, before exec

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the shim died before the request took effect
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


def parse(argv: list[str]) -> tuple[str, set[int] | None, str | None, list[str]]:
    """``--status FILE [--cpus LIST] [--cgroup DIR] -- COMMAND...``; exits 2 when malformed."""
    options: dict[str, str] = {}
    rest = list(argv)
    while rest and rest[0] != "--":
        if len(rest) < 2 or rest[0] not in ("--status", "--cpus", "--cgroup"):
            sys.exit(f"underlay shim: unexpected argument {rest[0]!r}; see the module docstring")
        options[rest[0]] = rest[1]
        rest = rest[2:]
    command = rest[1:]
    if "--status" not in options or not command:
        sys.exit("usage: shim --status FILE [--cpus 0,1] [--cgroup DIR] -- COMMAND...")
    cpus = {int(c) for c in options["--cpus"].split(",")} if options.get("--cpus") else None
    return options["--status"], cpus, options.get("--cgroup"), command


def main(argv: list[str]) -> int:
    status, cpus, cgroup, command = parse(argv)
    return Shim(status, command).run(cpus, cgroup)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
