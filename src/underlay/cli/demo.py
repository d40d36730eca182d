"""``underlay demo``: the platform's main job end to end, on a fresh temporary home.

The demo is a list of steps sharing one :class:`DemoContext`; later issues append steps
(a scheduled job, a dataset, a training run, a deployment...) so it grows with the platform.
Everything goes through a real server process and the public SDK, as a user would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from underlay.cli.demo_monitoring import retrain_loop
from underlay.cli.demo_serving import canary_and_cleanup, deploy_and_predict

if TYPE_CHECKING:
    from rich.console import Console

    from underlay.client import Client


@dataclass
class DemoContext:
    console: Console
    home: Path
    url: str
    admin: Client
    state: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.console.print(f"   {text}")


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[DemoContext], None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(
    home: Path, admin_token: str, port: int, store_url: str | None = None
) -> Iterator[tuple[str, float]]:
    """Run ``underlay up`` as a child process (metadata in ``store_url``, else SQLite in
    ``home``); yields its URL and seconds until ready."""
    from underlay.client import Client

    env = {
        **os.environ,
        "UNDERLAY_HOME": str(home),
        "UNDERLAY_ADMIN_TOKEN": admin_token,
        "UNDERLAY_SECURITY__AUDIT_CHECKPOINT_EVERY": "5",  # show signed checkpoints early
        # no GPU needed: the demo node declares two simulated A100s (marked so everywhere)
        "UNDERLAY_COMPUTE__SIMULATED_ACCELERATORS": '[{"type": "A100", "count": 2}]',
        "UNDERLAY_COMPUTE__NODE_NAME": "demo-node",
        "UNDERLAY_COMPUTE__LOOP_INTERVAL_S": "0.2",
        "UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S": "0.5",
        "UNDERLAY_UI__SAMPLE_INTERVAL_S": "2",  # the overview's charts fill during the demo
    }
    for key in ("UNDERLAY_STORE__URL", "UNDERLAY_BLOBS__URL", "UNDERLAY_URL", "UNDERLAY_TOKEN"):
        env.pop(key, None)
    if store_url:
        env["UNDERLAY_STORE__URL"] = store_url
    log = (home / "server.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "underlay.cli.main", "up", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url, admin_token, timeout_s=2) as probe:
            while not probe.ready():
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited; see {home / 'server.log'}")
                if time.perf_counter() - started > 30:
                    raise RuntimeError("server not ready after 30 s")
                time.sleep(0.05)
        yield url, time.perf_counter() - started
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _project_and_people(ctx: DemoContext) -> None:
    from underlay.client import Client

    ctx.admin.create_project("vision", "image models")
    password = secrets.token_urlsafe(12)  # for the dashboard's sign-in at the end
    ctx.admin.create_user("alice", email="alice@example.org", password=password)
    ctx.state["alice_password"] = password
    ctx.admin.add_member("vision", "alice", "member")
    token = ctx.admin.create_token("demo", expires_in_days=1, user="alice").token
    ctx.state["alice"] = Client(ctx.url, token)
    ctx.state["alice_token"] = token
    ctx.say("project [bold]vision[/], user [bold]alice[/] as member, a 1-day token for alice")


def _encrypted_blob(ctx: DemoContext) -> None:
    alice: Client = ctx.state["alice"]
    rows = ["sepal_length,sepal_width,label"] + [
        f"{4 + i % 30 / 10:.1f},{2 + i % 20 / 10:.1f},{i % 3}" for i in range(2000)
    ]
    data = ("\n".join(rows) + "\n").encode()
    blob = alice.upload_blob("vision", data, name="flowers.csv", media_type="text/csv")
    back = alice.download_blob("vision", blob.digest)
    assert back == data, "blob read back differs"
    stored = next((ctx.home / "blobs").rglob(blob.digest))
    plaintext_on_disk = data[:64] in stored.read_bytes()
    ctx.state["dataset"] = blob.digest
    ctx.say(f"uploaded {blob.size:,} bytes as sha256:{blob.digest[:16]}…, read back identical")
    ctx.say(
        f"on disk: {stored.stat().st_size:,} bytes of AES-256-GCM ciphertext "
        f"(plaintext visible: {plaintext_on_disk})"
    )


def _lineage(ctx: DemoContext) -> None:
    alice: Client = ctx.state["alice"]
    model = alice.upload_blob("vision", hashlib.sha256(b"weights").digest() * 64, name="model.bin")
    alice.add_lineage("vision", ("blob", ctx.state["dataset"]), "input_of", ("run", "train-1"))
    alice.add_lineage("vision", ("run", "train-1"), "produced", ("blob", model.digest))
    graph = alice.lineage("vision", "blob", ctx.state["dataset"], direction="downstream")
    for edge in graph.edges:
        ctx.say(
            f"{edge.src.kind}:{edge.src.id[:12]} —{edge.relation}→ "
            f"{edge.dst.kind}:{edge.dst.id[:12]}"
        )


def _isolation(ctx: DemoContext) -> None:
    from underlay.client import Client
    from underlay.errors import NotFound

    ctx.admin.create_user("bob")
    ctx.admin.create_project("finance")
    ctx.admin.add_member("finance", "bob", "viewer")
    with Client(ctx.url, ctx.admin.create_token("demo", user="bob").token) as bob:
        try:
            bob.list_blobs("vision")
        except NotFound as exc:
            ctx.say(f"bob (finance viewer) reading vision's blobs: 404 — {exc}")
        else:
            raise AssertionError("bob could read another project's blobs")


def _scheduled_job(ctx: DemoContext) -> None:
    import sys

    alice: Client = ctx.state["alice"]
    deadline = time.monotonic() + 30
    while not ctx.admin.list_nodes():  # the server's own agent registers within a heartbeat
        if time.monotonic() > deadline:
            raise RuntimeError("no node agent registered within 30 s")
        time.sleep(0.1)
    for node in ctx.admin.list_nodes():
        accs = ", ".join(
            f"{a.type}{' (simulated)' if a.simulated else ''}" for a in node.accelerators
        )
        ctx.say(f"node {node.name}: {node.cpu_milli / 1000:g} CPUs, {accs or 'no accelerators'}")
        if node.isolation == "none":
            ctx.say(f"node {node.name}: jobs are NOT isolated (no root, no user namespaces)")
        else:
            ctx.say(f"node {node.name}: jobs run sandboxed ({node.isolation})")
    code = "import time; time.sleep(1); print('trained on half an A100')"
    job = alice.submit_job(
        "vision",
        [sys.executable, "-c", code],
        name="train",
        gpu_fraction=0.5,
        gpu_type="A100",
        cpus=1,
    )
    done = alice.wait_job("vision", job.id, timeout_s=120)
    lines = b"".join(alice.job_logs("vision", job.id)).decode().strip().splitlines()
    if done.state != "succeeded":
        raise AssertionError(f"job {job.id} {done.state}: {done.reason}; its log: {lines[-5:]}")
    ctx.say(f"job {job.id} {done.state} on {done.node}: {lines[-1] if lines else ''!r}")
    (usage,) = alice.usage(project="vision")
    label = " (estimate)" if usage.energy_estimated else ""
    ctx.say(
        f"usage: {usage.wall_hours * 3600:.1f} s wall, {usage.gpu_hours * 3600:.1f} "
        f"GPU-seconds, {usage.energy_kwh * 1000:.2f} Wh{label}, {usage.cost:.4f} "
        f"{usage.currency}, {usage.carbon_kg * 1000:.2f} gCO2e"
    )


def _dataset(ctx: DemoContext) -> None:
    alice: Client = ctx.state["alice"]
    folder = ctx.home / "demo-images"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (folder / label / f"{i}.png").write_bytes(
                hashlib.sha256(f"{label}{i}".encode()).digest() * 100
            )
    v1 = alice.push_dataset("vision", "pets", folder, message="first cut")
    (folder / "cat" / "0.png").write_bytes(b"relabelled" * 100)
    (folder / "dog" / "2.png").unlink()
    (folder / "bird").mkdir()
    (folder / "bird" / "0.png").write_bytes(b"tweet" * 100)
    blobs_before = len(alice.list_blobs("vision", limit=1000))
    v2 = alice.push_dataset("vision", "pets", folder, message="fix a label, add birds")
    new_blobs = len(alice.list_blobs("vision", limit=1000)) - blobs_before
    change = alice.diff_dataset("vision", "pets", v1.version, v2.version)
    ctx.say(
        f"dataset pets@{v1.version}: {v1.file_count} files; pets@{v2.version}: "
        f"{v2.file_count} files ({len(change.added)} added, {len(change.removed)} removed, "
        f"{len(change.changed)} changed); only {new_blobs} new file(s) were uploaded and stored"
    )
    out = ctx.home / "demo-pull"
    alice.pull_dataset("vision", "pets", out, version=v1.version)
    ctx.say(f"pulled pets@{v1.version} back, every file verified against its digest")


def _table_and_sql(ctx: DemoContext) -> None:
    import random

    alice: Client = ctx.state["alice"]
    rng = random.Random(7)
    countries = ["DE", "FR", "NL", "PL"]
    lines = ["id,country,spend,visits,churned"]
    for i in range(2000):
        spend, visits = rng.randint(5, 500), rng.randint(0, 30)
        churned = int(spend / 500 + visits / 30 + rng.gauss(0, 0.25) < 0.9)  # the label
        lines.append(f"{i},{rng.choice(countries)},{spend},{visits},{churned}")
    lines[500] = "499,DE,a lot,3,0"  # a value that is no number
    lines[1500] = "1499,FR"  # fields missing
    path = ctx.home / "orders.csv"
    path.write_text("\n".join(lines) + "\n")
    result = alice.write_table("vision", "orders", path)
    ctx.say(
        f"table orders@{result.version}: {result.rows_written:,} rows written, "
        f"{result.rows_quarantined} quarantined in {result.quarantine_table} with line and reason"
    )
    top = alice.sql(
        "vision",
        "select country, count(*) as orders, sum(spend) as spend from orders "
        "group by country order by spend desc limit 2",
    ).to_pylist()
    ctx.say(
        "SQL (DuckDB, sandboxed): "
        + "; ".join(f"{r['country']} {r['orders']} orders, {r['spend']:,} spent" for r in top)
    )
    from underlay.errors import InvalidInput

    try:
        alice.sql("vision", "select * from read_csv('/etc/passwd')")
    except InvalidInput as exc:
        ctx.say(f"reading a server file through SQL is refused: {exc}")
    else:
        raise AssertionError("SQL could read a server file")


def _customers_pii(ctx: DemoContext) -> None:
    """A seeded customer table with personal data: what the PII engine found and did."""
    import random

    alice: Client = ctx.state["alice"]
    rng = random.Random(11)
    first = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Tim"]
    last = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Berners-Lee"]
    lines = ["id,name,email,phone,birth_date,city,spend"]
    for i in range(500):
        given, family = rng.choice(first), rng.choice(last)
        email = f"{given}.{family}{i}@example.com".lower()
        phone = f"+44 20 7946 {rng.randint(0, 9999):04d}"
        born = f"{rng.randint(1950, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        city = rng.choice(["London", "Leeds", "York"])
        spend = rng.randint(5, 900)
        lines.append(f"{i},{given} {family},{email},{phone},{born},{city},{spend}")
    path = ctx.home / "customers.csv"
    path.write_text("\n".join(lines) + "\n")
    result = alice.write_table("vision", "customers", path, pii={"phone": "partial"})
    stored = alice.read_table("vision", "customers").to_pylist()
    first_row = min(stored, key=lambda row: row["id"])
    ctx.say(f"table customers@{result.version}: {result.rows_written} rows; personal data found:")
    for column in (result.pii or {}).get("columns", []):
        if column["types"]:
            how = column["policy"] + (" (by default)" if column["default"] else "")
            ctx.say(
                f"  {column['column']}: {', '.join(column['types'])} -> {how}; "
                f"stored as {first_row[column['column']]!r}"
            )
    raw = {value for line in lines[1:] for value in line.split(",")[1:5]}
    leaked = [v for row in stored for v in row.values() if str(v) in raw]
    if leaked:
        raise AssertionError(f"raw personal data was stored: {leaked[:3]}")
    ctx.say("no raw name, email, phone number or birth date reached the table's files")


def _quality_gate(ctx: DemoContext) -> None:
    """Checks declared on a customer table: a bad batch is rejected, a clean one published."""
    alice: Client = ctx.state["alice"]
    checks = [
        {"type": "not_null", "column": "id"},
        {"type": "unique", "column": "id"},
        {"type": "allowed", "column": "country", "values": ["DE", "FR", "NL", "PL"]},
        {"type": "range", "column": "spend", "min": 0},
        {"type": "row_count", "max": 100_000, "blocking": False},
    ]
    header = "id,country,spend\n"
    clean = ctx.home / "customers-1.csv"
    clean.write_text(header + "".join(f"{i},DE,{10 + i}\n" for i in range(1, 51)))
    first = alice.write_table("vision", "customer_accounts", clean, checks=checks)
    ctx.say(
        f"declared {len(checks)} checks on customer_accounts; its first batch passes: "
        f"customer_accounts@{first.version} published"
    )
    bad = ctx.home / "customers-2.csv"
    bad.write_text(header + "51,FR,12\n52,UK,30\n7,NL,-4\n")  # a country, a duplicate id
    rejected = alice.write_table("vision", "customer_accounts", bad)
    report = rejected.quality or {}
    ctx.say(
        f"customer_accounts@{rejected.version} rejected (published: {rejected.published}): "
        f"{', '.join(report.get('failed', []))} failed"
    )
    from rich.markup import escape

    for check in report.get("checks", []):
        if not check["passed"]:  # "name — reason": "unique:id:" would print as an emoji
            sample = check["sample"][0] if check["sample"] else {}
            ctx.say(escape(f"  {check['name']} — {check['reason']}; e.g. {sample}"))
    seen = alice.table_info("vision", "customer_accounts").version
    ctx.say(f"readers still see customer_accounts@{seen}")
    fixed = ctx.home / "customers-3.csv"
    fixed.write_text(header + "51,FR,12\n52,NL,30\n53,PL,4\n")
    good = alice.write_table("vision", "customer_accounts", fixed)
    if rejected.published or not good.published:
        raise AssertionError("the quality gate did not hold")
    ctx.say(
        f"the fixed batch passes: customer_accounts@{good.version} published, {good.num_rows} rows"
    )


def _train_and_register(ctx: DemoContext) -> None:
    """Train on the orders table with tracked params and metrics, register the model signed,
    move its champion alias, show its card."""
    import numpy as np
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from underlay.client.tracking import start_run

    alice: Client = ctx.state["alice"]
    version = alice.table_info("vision", "orders").version
    table = alice.read_table("vision", "orders", version=version)
    features = np.column_stack([table["spend"].to_numpy(), table["visits"].to_numpy()])
    features = features.astype(np.float32)
    labels = table["churned"].to_numpy()
    order = np.random.default_rng(5).permutation(len(labels))
    train, test = order[:1500], order[1500:]
    hidden, epochs, lr = 16, 30, 0.01
    params = {"hidden": hidden, "epochs": epochs, "lr": lr, "seed": 5}
    inputs = [{"kind": "table", "name": "orders", "version": version}]
    with start_run(
        "vision", "churn", client=alice, params=params, inputs=inputs, record_environment=False
    ) as run:
        scaler = StandardScaler().fit(features[train])
        net = MLPClassifier((hidden,), learning_rate_init=lr, random_state=5)
        for epoch in range(epochs):
            net.partial_fit(scaler.transform(features[train]), labels[train], classes=[0, 1])
            accuracy = net.score(scaler.transform(features[test]), labels[test])
            run.log(step=epoch, loss=float(net.loss_), accuracy=float(accuracy))
        model = make_pipeline(scaler, net)
        run.log_model(model, "model", input_example=features[:8])
    ctx.say(
        f"run {run.id} in experiment churn: {len(params)} params, {epochs} steps of "
        f"loss and accuracy (held-out accuracy {accuracy:.3f}), trained on orders@{version}"
    )
    registered = alice.register_model("vision", "churn", run=run.id, path="model")
    alice.set_alias("vision", "churn", "champion", registered.version, reason="first model")
    ctx.say(
        f"registered churn@{registered.version}, signed (Ed25519 over a manifest of hashes); "
        "alias champion moved, with who, when and why"
    )
    loaded = alice.load_model("vision", "churn@champion")
    agree = float(np.mean(loaded.predict(features[test]) == model.predict(features[test])))
    ctx.say(
        f"loaded churn@champion verified; its predictions match the trained model's: {agree:.0%}"
    )
    card = alice.model_card("vision", "churn@champion").text.splitlines()
    ctx.say("model card (first lines):")
    for line in [line for line in card if line.strip()][:6]:
        ctx.say(f"  {line}")
    ctx.state["churn_test_rows"] = test
    ctx.state["churn_model"] = loaded


def _edge_export(ctx: DemoContext) -> None:
    """Export the champion to int8 ONNX with its report, gated on a held-out table."""
    import pyarrow as pa

    alice: Client = ctx.state["alice"]
    orders = alice.read_table("vision", "orders")
    held = orders.take(pa.array(ctx.state["churn_test_rows"])).select(
        ["spend", "visits", "churned"]
    )
    alice.write_table("vision", "orders_holdout", held)
    result = alice.export_model(
        "vision", "churn@champion", quantize="int8", held_out="orders_holdout", label="churned"
    )
    report = result.report
    for variant in report["variants"]:
        ctx.say(
            f"  {variant['name']:<10} {variant['size_bytes']:>8,} bytes  batch p50 "
            f"{variant['batch']['p50_ms']:.3f} ms  accuracy {variant['metric']:.2f}"
        )
    ctx.say(
        f"exported churn-onnx@{result.version.version}: size x{report['size_ratio']:.2f}, "
        f"accuracy change {report['variants'][-1]['change']:+.2f} points "
        f"(tolerance {report['tolerance']}), signed, with lineage to churn@champion"
    )


def _audit(ctx: DemoContext) -> None:
    report = ctx.admin.verify_audit()
    denied = ctx.admin.list_audit(outcome="denied")
    ctx.say(
        f"audit chain {'OK' if report.ok else 'BROKEN'}: {report.entries_checked} entries, "
        f"{report.checkpoints_checked} signed checkpoints; {len(denied)} denied request(s) recorded"
    )
    if not report.ok:
        raise AssertionError(report.problem)


STEPS: list[Step] = [
    Step("A project, a member and a token", _project_and_people),
    Step("Store and read back an encrypted blob", _encrypted_blob),
    Step("Record and show lineage", _lineage),
    Step("Tenant isolation", _isolation),
    Step("Version a dataset of files", _dataset),
    Step("Ingest a table and query it with SQL", _table_and_sql),
    Step("Mask personal data on ingest", _customers_pii),
    Step("Gate a table's versions on quality checks", _quality_gate),
    Step(
        "Train a model with tracked params and metrics; register and sign it", _train_and_register
    ),
    Step("Export the champion to int8 ONNX, gated on held-out accuracy", _edge_export),
    Step("Run a job through the scheduler and bill it", _scheduled_job),
    Step("Deploy the champion; predict through JSON and the V2 protocol", deploy_and_predict),
    Step("Canary a broken retrain: it is rolled back by itself", canary_and_cleanup),
    Step("Traffic drifts: the loop retrains, canaries and promotes by itself", retrain_loop),
    Step("Verify the audit log", _audit),
]


def dashboard_lines(url: str, password: str, token: str, *, serving: bool) -> list[str]:
    """What the demo says last: where its dashboard is and how to sign in."""
    sign_in = f"sign in as [bold]alice[/] with password [bold]{password}[/]"
    if serving:
        return [
            f"[bold]dashboard:[/] {url}/ — {sign_in} (or with the admin token {token})",
            "serving the demo's data until Ctrl-C",
        ]
    return [
        f"[bold]dashboard:[/] was at {url}/ while the demo ran; run [bold]underlay demo "
        f"--serve[/] (the default in a terminal) to keep it up at the end, then {sign_in}",
    ]


def in_terminal() -> bool:
    """Whether a person runs the demo (then it keeps serving the dashboard at the end)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _serve_until_interrupted() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def demo(
    keep: Annotated[
        bool, typer.Option("--keep", metavar="", help="Keep the temporary home folder.")
    ] = False,
    serve_after: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            metavar="",
            help="At the end, keep the server up for the dashboard until Ctrl-C "
            "(default: when run in a terminal).",
        ),
    ] = None,
) -> None:
    """Run the platform end to end on a fresh temporary home, printing each step. With
    UNDERLAY_STORE__URL naming PostgreSQL, the metadata goes to a database made on that server
    for the run (and dropped after it); UNDERLAY_EXECUTOR=ray runs its jobs on Ray."""
    from rich.console import Console

    from underlay.cli.demo_store import demo_database
    from underlay.client import Client

    console = Console()
    if serve_after is None:
        serve_after = in_terminal()
    home = Path(tempfile.mkdtemp(prefix="underlay-demo-"))
    token = "ul_" + secrets.token_urlsafe(32)
    # Libraries the demo loads write scratch files into TMPDIR (onnxruntime leaves a session
    # file there on import); pointing it into the demo's home removes them with the home.
    scratch = home / "tmp"
    scratch.mkdir()
    saved_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None
    try:
        with (
            demo_database(os.environ.get("UNDERLAY_STORE__URL"), keep=keep) as store_url,
            serve(home, token, _free_port(), store_url) as (url, ready_s),
            Client(url, token) as admin,
        ):
            console.print(
                f"[bold]underlay demo[/] — server at {url}, ready in {ready_s:.2f} s, home {home}"
            )
            if store_url:
                where = store_url.rsplit("@", 1)[-1]
                console.print(f"metadata in PostgreSQL: {where} (made for this run)")
            ctx = DemoContext(console, home, url, admin)
            for number, step in enumerate(STEPS, 1):
                console.print(f"[bold cyan]{number}. {step.title}[/]")
                step.run(ctx)
            for value in ctx.state.values():
                if hasattr(value, "close"):
                    value.close()
            console.print("[bold green]demo complete[/]")
            password = ctx.state["alice_password"]
            for line in dashboard_lines(url, password, token, serving=serve_after):
                console.print(line)
            if serve_after:
                _serve_until_interrupted()
    finally:
        if saved_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_tmpdir
        tempfile.tempdir = None
        if keep:
            console.print(f"home kept at {home}")
        else:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
