"""Job logs on the server: appended by node agents as they arrive, read from any offset.

Each attempt's output is kept in its own file under ``<home>/logs/job-<id>/``; reading a job
concatenates its attempts in order, each under a one-line header (always, so offsets stay
stable as attempts are added), and a retried job's history reads top to bottom. Reads seek
to the offset and return a bounded slice, so serving or following a log of any size holds
at most :data:`READ_CHUNK` bytes per reader.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from underlay.errors import InvalidInput

MAX_APPEND = 4 * 1024 * 1024
READ_CHUNK = 256 * 1024  # bytes per read while streaming: bounds a reader's memory


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


def _segments(home: Path, job_id: int) -> Iterator[tuple[bytes, Path]]:
    """Each attempt's header and file, in attempt order."""
    folder = _folder(home, job_id)
    if not folder.exists():
        return
    files = sorted(folder.glob("attempt-*.log"), key=lambda p: int(p.stem.split("-")[1]))
    for path in files:
        yield f"── attempt {path.stem.split('-')[1]} ──\n".encode(), path


def read(home: Path, job_id: int, offset: int = 0, limit: int = READ_CHUNK) -> bytes:
    """Up to ``limit`` bytes of the job's combined log from ``offset``.

    Only what is returned is read: earlier attempts are skipped by their size (a ``stat``)
    and the file holding ``offset`` is entered with a ``seek``, so a caller following a log
    chunk by chunk reads each byte once and holds at most ``limit`` bytes.
    """
    if offset < 0 or limit < 0:
        raise InvalidInput("log offset and limit must not be negative")
    parts: list[bytes] = []
    wanted = limit
    for header, path in _segments(home, job_id):
        if wanted <= 0:
            break
        if offset < len(header):
            piece = header[offset : offset + wanted]
            parts.append(piece)
            wanted -= len(piece)
            offset = 0
        else:
            offset -= len(header)
        try:
            size = path.stat().st_size
            if offset >= size:
                offset -= size
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                piece = handle.read(min(wanted, size - offset))
        except FileNotFoundError:
            break  # its project was deleted meanwhile: the log ends here
        parts.append(piece)
        wanted -= len(piece)
        offset = 0
    return b"".join(parts)


def tail(home: Path, job_id: int, limit: int = READ_CHUNK) -> bytes:
    """Up to the last ``limit`` bytes of the job's newest attempt's output (no header)."""
    files = [path for _, path in _segments(home, job_id)]
    if not files:
        return b""
    try:
        with files[-1].open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - limit))
            return handle.read(limit)
    except FileNotFoundError:
        return b""  # its project was deleted meanwhile


def remove(home: Path, job_id: int) -> None:
    """Delete every attempt's output of a job (its project was deleted)."""
    shutil.rmtree(_folder(home, job_id), ignore_errors=True)
