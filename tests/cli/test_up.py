"""`underlay up` as a real process: TLS, several workers sharing one audit chain."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.conftest import ServerProcess
from tests.conftest import ADMIN_TOKEN, free_port
from underlay.client import Client


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def running(
    home: Path,
    *args: str,
    scheme: str = "http",
    verify: bool | str = True,
    pids: list[int] | None = None,
) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "UNDERLAY_HOME": str(home), "UNDERLAY_ADMIN_TOKEN": ADMIN_TOKEN}
    log = (home.parent / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"{scheme}://127.0.0.1:{port}"
    if pids is not None:
        pids.append(proc.pid)
    try:
        deadline = time.monotonic() + 90  # generous: under a loaded machine imports are slow
        while True:
            try:
                if httpx.get(f"{url}/readyz", verify=_ctx(verify), timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (home.parent / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield url
    except BaseException:
        print((home.parent / "server.log").read_text(errors="replace"))  # shown with the failure
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        log.close()


def test_serves_https_with_given_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    home = tmp_path / "home"
    with running(
        home, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https", verify=str(cert)
    ) as url:
        with Client(url, ADMIN_TOKEN, verify=str(cert)) as c:
            assert c.me().name == "admin"
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served
            httpx.get(url.replace("https", "http") + "/readyz", timeout=2).raise_for_status()


def test_tls_cert_without_key_is_one_line_error(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "underlay.cli.main", "up", "--tls-cert", str(cert)],
        capture_output=True,
        text=True,
        env={**os.environ, "UNDERLAY_HOME": str(tmp_path / "h")},
        timeout=30,
    )
    assert result.returncode != 0
    assert "--tls-cert and --tls-key go together" in result.stderr
    assert "Traceback" not in result.stderr


def _listening_workers(pid: int, port: int) -> int:
    """Child processes of ``pid`` that hold the server's listening socket (serving workers)."""
    count = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            count += 1
    return count


@pytest.mark.slow
def test_workers_share_one_valid_audit_chain(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pids: list[int] = []
    with running(home, "--workers", "3", pids=pids) as url, Client(url, ADMIN_TOKEN) as admin:
        port = int(url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while _listening_workers(pids[0], port) < 3:  # --workers 3: three serving processes
            assert time.monotonic() < deadline, "three workers never listened"
            time.sleep(0.05)
        assert _listening_workers(pids[0], port) == 3
        admin.create_project("busy")

        def work(i: int) -> None:
            with Client(url, ADMIN_TOKEN) as c:
                c.upload_blob("busy", f"blob {i}".encode())
                c.add_lineage("busy", ("blob", f"b{i}"), "input_of", ("run", f"r{i}"))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(60)))
        report = admin.verify_audit()
        assert report.ok, report.problem
        creates = admin.list_audit(action="blob.create", limit=1000)
        assert len(creates) == 60
        seqs = [e.seq for e in admin.list_audit(limit=1000)]
        assert seqs == list(range(1, len(seqs) + 1))


def _ctx(verify: bool | str) -> bool | ssl.SSLContext:
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


@pytest.mark.parametrize("isolation", ["auto", "none"])
def test_up_says_at_start_up_how_jobs_are_isolated(tmp_path: Path, isolation: str) -> None:
    class Server(ServerProcess):
        def extra_env(self) -> dict[str, str]:
            return {"UNDERLAY_COMPUTE__ISOLATION": isolation, "UNDERLAY_COMPUTE__NODE_NAME": "n1"}

    server = Server(tmp_path / "home").start()
    try:
        deadline = time.monotonic() + 30
        while "node n1: " not in server.output():  # the built-in agent starts after readiness
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
    finally:
        server.stop()
    line = next(x for x in server.output().splitlines() if "node n1: " in x)
    if isolation == "none":
        assert "jobs are NOT isolated" in line and "WARNING" in line
    elif os.geteuid() == 0:
        assert "jobs run isolated (namespaces+user)" in line


def test_a_port_in_use_is_one_line_error_before_anything_starts(tmp_path: Path) -> None:
    import socket

    from tests.cli.conftest import clean_env, run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(UNDERLAY_HOME=str(tmp_path / "home"), UNDERLAY_ADMIN_TOKEN=ADMIN_TOKEN)
        result = run_cli("up", "--port", str(port), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: address already")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "serving on" not in result.stderr + result.stdout
    assert "leader" not in result.stderr + result.stdout


def test_a_restart_logs_no_warning_that_the_agent_cannot_reach_the_server(tmp_path: Path) -> None:
    # The built-in agent starts before its server listens and ticks once more after the
    # server closed: neither is worth a warning (both were one, at every restart).
    server = ServerProcess(tmp_path / "home")
    for _ in range(2):
        with server, Client(server.url, ADMIN_TOKEN) as c:
            deadline = time.monotonic() + 30
            while not c.list_nodes() and time.monotonic() < deadline:  # the agent got through
                time.sleep(0.1)
            time.sleep(1.5)  # a heartbeat interval or so, so it ticks again before the stop
    output = server.output()
    assert output.count("Finished server process") == 2, output
    assert "WARNING" not in output, output
    assert "cannot reach the server" not in output
