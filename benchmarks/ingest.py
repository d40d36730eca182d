"""Dataset push throughput against ``cp -r`` of the same files, measured in the same run.

Generates ``--total-mib`` of mixed files (4 KiB to 64 MiB, log-uniform sizes, seeded, as
``benchmarks/blobs.py`` does) in a folder tree, starts ``underlay up`` on a temporary home
(SQLite, local blob folder), and pushes the folder as a dataset version through the SDK: every
file hashed by the client, uploaded, hashed again, encrypted (AES-256-GCM), fsynced and
renamed by the server, then the manifest committed. The baseline copies the same tree with
``cp -r`` followed by ``sync`` (the push's files are durable when it returns; a copy is not
until it is synced). Target: push throughput >= 0.5 x the copy's. A second push of the
unchanged folder shows the cost of a no-op push (hashing only).

    python benchmarks/ingest.py --total-mib 1024
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blobs import file_sizes, generate  # the same generator as the blob benchmark

from underlay.client import Client

TOKEN = "ul_bench_" + "0" * 40


def serve(home: Path, port: int, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "UNDERLAY_HOME": str(home), "UNDERLAY_ADMIN_TOKEN": TOKEN, **(extra or {})}
    env["UNDERLAY_COMPUTE__LOCAL_AGENT"] = "false"
    proc = subprocess.Popen(
        [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    with Client(f"http://127.0.0.1:{port}", TOKEN) as c:
        while not c.ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("underlay up did not start")
            time.sleep(0.1)
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="ul-ingest-") as tmp:
        root = Path(tmp)
        src = root / "src"
        sizes = file_sizes(args.total_mib * 1024 * 1024, rng)
        for part in range(4):  # a tree, not one flat folder
            (src / f"part-{part}").mkdir(parents=True)
        flat = root / "flat"
        flat.mkdir()
        for i, path in enumerate(generate(flat, sizes, rng)):
            path.rename(src / f"part-{i % 4}" / path.name)
        total = sum(sizes)
        subprocess.run(["sync"], check=True)

        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(src), str(root / "copy")], check=True)
        subprocess.run(["sync"], check=True)
        copy_s = time.perf_counter() - start

        port = free_port()
        server = serve(root / "home", port)
        try:
            with Client(f"http://127.0.0.1:{port}", TOKEN, timeout_s=600) as c:
                c.create_project("bench")
                start = time.perf_counter()
                version = c.push_dataset("bench", "files", src)
                push_s = time.perf_counter() - start
                start = time.perf_counter()
                again = c.push_dataset("bench", "files", src)
                noop_s = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(30)
        assert version.file_count == len(sizes) and not again.created
        mib = total / 1024 / 1024
        print(f"{len(sizes)} files, {mib:.0f} MiB")
        print(f"cp -r + sync      {copy_s:7.2f} s  {mib / copy_s:8.1f} MiB/s")
        print(f"datasets push     {push_s:7.2f} s  {mib / push_s:8.1f} MiB/s")
        print(f"push, unchanged   {noop_s:7.2f} s  {mib / noop_s:8.1f} MiB/s (hashing only)")
        print(f"push / cp throughput ratio: {copy_s / push_s:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
