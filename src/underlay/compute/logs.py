"""Job logs on the server: appended by node agents as they arrive, read from any offset.

Each attempt's output is kept in its own file under ``<home>/logs/job-<id>/``; reading a job
concatenates its attempts in order, each under a one-line header (always, so offsets stay
stable as attempts are added), and a retried job's history reads top to bottom.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MAX_APPEND = 4 * 1024 * 1024


def _folder(home: Path, job_id: int) -> Path:
    return home / "logs" / f"job-{int(job_id)}"


def size(home: Path, job_id: int, attempt: int) -> int:
    """How many bytes of an attempt's output the server holds."""
    path = _folder(home, job_id) / f"attempt-{int(attempt)}.log"
    return path.stat().st_size if path.exists() else 0


def append(home: Path, job_id: int, attempt: int, data: bytes, offset: int | None = None) -> None:
    """Store ``data``, which starts at ``offset`` of the attempt's output; bytes the server
    holds already (an agent re-sending after a restart) are skipped, so nothing shows twice."""
    folder = _folder(home, job_id)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if offset is not None:
        held = size(home, job_id, attempt)
        if offset < held:
            data = data[held - offset :]
    with (folder / f"attempt-{int(attempt)}.log").open("ab") as handle:
        handle.write(data)


def read(home: Path, job_id: int, offset: int = 0, limit: int = MAX_APPEND) -> bytes:
    """Up to ``limit`` bytes of the job's combined log from ``offset``."""
    folder = _folder(home, job_id)
    if not folder.exists():
        return b""
    parts: list[bytes] = []
    files = sorted(folder.glob("attempt-*.log"), key=lambda p: int(p.stem.split("-")[1]))
    for path in files:
        parts.append(f"── attempt {path.stem.split('-')[1]} ──\n".encode())
        parts.append(path.read_bytes())
    combined = b"".join(parts)
    return combined[offset : offset + limit]


def remove(home: Path, job_id: int) -> None:
    """Delete every attempt's output of a job (its project was deleted)."""
    shutil.rmtree(_folder(home, job_id), ignore_errors=True)
