"""Job logs on the server: a slice from any offset reads only that slice (seek, bounded
memory), and the logs route streams a large log exactly, from any offset."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from underlay.compute import logs

MIB = 1024 * 1024


def write_log(home: Path, job_id: int, sizes: list[int]) -> bytes:
    """Attempts of the given sizes (random bytes); returns the combined log as read back."""
    combined = []
    folder = home / "logs" / f"job-{job_id}"
    folder.mkdir(parents=True, exist_ok=True)
    for number, size in enumerate(sizes, start=1):
        data = os.urandom(size)
        (folder / f"attempt-{number}.log").write_bytes(data)
        combined += [f"── attempt {number} ──\n".encode(), data]
    return b"".join(combined)


def slices(home: Path, job_id: int, offset: int) -> Iterator[bytes]:
    while chunk := logs.read(home, job_id, offset):
        offset += len(chunk)
        yield chunk


def test_reading_a_large_log_in_slices_holds_one_slice_at_a_time(tmp_path: Path) -> None:
    expected = write_log(tmp_path, 7, [3 * MIB, 24 * MIB])
    digest, peaks, count = hashlib.sha256(), [], 0
    tracemalloc.start()
    try:
        chunks = slices(tmp_path, 7, 0)
        while True:
            tracemalloc.reset_peak()
            chunk = next(chunks, None)
            peaks.append(tracemalloc.get_traced_memory()[1])
            if chunk is None:
                break
            assert len(chunk) <= logs.READ_CHUNK
            digest.update(chunk)
            count += len(chunk)
            del chunk
    finally:
        tracemalloc.stop()
    assert count == len(expected)
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert max(peaks) < 4 * logs.READ_CHUNK, max(peaks)


@pytest.mark.parametrize("offset", [0, 5, 17, 3 * MIB + 10, 3 * MIB + 40, 4 * MIB, 10**9])
def test_a_slice_from_any_offset_is_exact(tmp_path: Path, offset: int) -> None:
    expected = write_log(tmp_path, 3, [3 * MIB, 2 * MIB, 100])
    assert logs.read(tmp_path, 3, offset, 1000) == expected[offset : offset + 1000]
    assert b"".join(slices(tmp_path, 3, offset)) == expected[offset:]


def test_a_job_without_logs_reads_empty(tmp_path: Path) -> None:
    assert logs.read(tmp_path, 99, 0) == b""


def test_the_logs_route_streams_a_large_log_exactly(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("vision")
    job = admin.submit_job("vision", ["true"])
    admin.wait_job("vision", job.id, timeout_s=60)  # finished: its log is now the test's
    expected = write_log(server.settings.home, job.id, [2 * MIB, 30 * MIB])
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    for offset in (0, 2 * MIB + 100):
        digest, count = hashlib.sha256(), 0
        url = f"{server.url}/api/v1/projects/vision/jobs/{job.id}/logs"
        with httpx.stream("GET", url, params={"offset": offset}, headers=headers, timeout=60) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                digest.update(chunk)
                count += len(chunk)
        assert count == len(expected) - offset
        assert digest.hexdigest() == hashlib.sha256(expected[offset:]).hexdigest()
