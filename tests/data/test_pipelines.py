"""ETL pipelines through the SDK against a live server (SQLite and PostgreSQL metadata): the
transforms run here, in the test process, exactly as a user's ``--local`` run; the server
only keeps the run records and the lineage."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from underlay.data.pipelines import Pipeline, Reject, load, python, sql
from underlay.errors import Conflict, InvalidInput, NotFound

ORDERS = pa.table(
    {
        "id": list(range(1, 11)),
        "customer": [1, 2, 3, 1, 2, 3, 1, 2, 3, 1],
        "amount": [10.0, -5.0, 30.0, 40.0, -1.0, 60.0, 70.0, 80.0, 90.0, 100.0],
    }
)
CUSTOMERS = pa.table({"customer": [1, 2, 3], "country": ["fr", "de", "uk"]})

STEPS = '''
import pyarrow as pa
import pyarrow.compute as pc
from underlay.data.pipelines import Reject


def clean(batches):
    """Rows with a negative amount are rejected; the rest get the amount in cents."""
    for batch in batches:
        negative = pc.less(batch.column("amount"), 0)
        yield Reject(batch.filter(negative), "negative amount")
        kept = batch.filter(pc.invert(negative))
        cents = pc.cast(pc.multiply(kept.column("amount"), 100), pa.int64())
        yield kept.append_column("cents", cents)


def explode(batches):
    for batch in batches:
        raise ValueError("boom in user code")
        yield batch
'''

YAML = """
name: order_facts
sources:
  orders: orders
  customers: customers
transforms:
  - name: joined
    sql: |
      select o.id, o.amount, c.country
      from orders o join customers c on o.customer = c.customer
  - name: cleaned
    python: steps:clean
output:
  table: order_facts
  mode: overwrite
"""


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("shop")
    admin.write_table("shop", "orders", ORDERS)
    admin.write_table("shop", "customers", CUSTOMERS)
    return "shop"


def _folder(tmp_path: Path, yaml_text: str = YAML, steps: str = STEPS) -> Path:
    folder = tmp_path / "etl"
    folder.mkdir(exist_ok=True)
    (folder / "steps.py").write_text(textwrap.dedent(steps))
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(yaml_text))
    return path


def test_yaml_pipeline_runs_with_exact_report_output_and_lineage(
    admin: Any, project: str, tmp_path: Path
) -> None:
    record = admin.run_pipeline(project, _folder(tmp_path))
    assert record.status == "succeeded", record.error
    assert [(i.table, i.version) for i in record.inputs] == [("customers", 0), ("orders", 0)]
    assert (record.output_table, record.output_version) == ("order_facts", 0)
    assert (record.rows_in, record.rows_out, record.rows_rejected) == (13, 8, 2)
    assert record.rows_quarantined == 0 and record.created_by == "admin"
    assert [(s.name, s.kind, s.rows_out, s.rows_rejected) for s in record.steps] == [
        ("joined", "sql", 10, 0),
        ("cleaned", "python", 8, 2),
    ]
    assert record.duration_s is not None and record.duration_s > 0
    assert record.finished_at is not None and record.job_id is None

    facts = admin.read_table(project, "order_facts").sort_by("id").to_pylist()
    assert [(r["id"], r["country"], r["cents"]) for r in facts] == [
        (1, "fr", 1000),
        (3, "uk", 3000),
        (4, "fr", 4000),
        (6, "uk", 6000),
        (7, "fr", 7000),
        (8, "de", 8000),
        (9, "uk", 9000),
        (10, "fr", 10000),
    ]
    rejected = admin.read_table(project, "order_facts_rejected").to_pylist()
    assert sorted(json.loads(r["row"])["id"] for r in rejected) == [2, 5]
    assert {(r["step"], r["reason"]) for r in rejected} == {("cleaned", "negative amount")}

    graph = admin.lineage(project, "table_version", "order_facts@0", direction="upstream")
    edges = {(e.src.id, e.relation, e.dst.id) for e in graph.edges}
    assert edges == {
        ("orders@0", "pipeline", "order_facts@0"),
        ("customers@0", "pipeline", "order_facts@0"),
    }
    actions = [e.action for e in admin.list_audit(action="pipeline.run.create")]
    assert actions == ["pipeline.run.create"]
    (finished,) = admin.list_audit(action="pipeline.run.finish")
    assert finished.resource == f"project:shop/pipeline:order_facts/run:{record.id}"
    assert [r.id for r in admin.list_pipeline_runs(project, "order_facts")] == [record.id]
    assert admin.read_pipeline_run(project, record.id) == record


def test_python_file_and_object_compile_to_the_yaml_spec(
    admin: Any, project: str, tmp_path: Path
) -> None:
    from_yaml = load(_folder(tmp_path))
    script = tmp_path / "etl" / "pipeline.py"
    script.write_text(
        textwrap.dedent(
            """
            from underlay.data.pipelines import Pipeline, python, sql

            pipeline = Pipeline(
                name="order_facts",
                sources={"orders": "orders", "customers": "customers"},
                transforms=[
                    sql("joined", "select o.id, o.amount, c.country\\n"
                        "from orders o join customers c on o.customer = c.customer\\n"),
                    python("cleaned", "steps:clean"),
                ],
                output={"table": "order_facts", "mode": "overwrite"},
            )
            """
        )
    )
    from_python = load(script)
    assert from_python.digest() == from_yaml.digest()
    assert from_python.model_dump() == from_yaml.model_dump()
    record = admin.run_pipeline(project, script)
    assert record.status == "succeeded" and record.spec_digest == from_yaml.digest()
    assert (record.rows_out, record.rows_rejected) == (8, 2)


def test_a_pipeline_object_with_a_function_runs_and_pins_versions(admin: Any, project: str) -> None:
    seen: list[int] = []

    def double(batches: Any) -> Any:
        for batch in batches:
            seen.append(batch.num_rows)
            yield batch.set_column(2, "amount", pa.compute.multiply(batch.column(2), 2))

    admin.write_table(project, "orders", ORDERS.slice(0, 3))  # orders@1 holds 13 rows
    pipeline = Pipeline(
        name="doubled",
        sources={"orders": "orders@0"},
        transforms=[
            python("doubled", double),
            sql("big", "select * from doubled where amount > 100"),
        ],
        output={"table": "big_orders"},
    )
    record = admin.run_pipeline(project, pipeline)
    assert record.status == "succeeded", record.error
    assert [(i.table, i.version) for i in record.inputs] == [("orders", 0)]
    assert sum(seen) == 10 and record.rows_in == 10
    ids = admin.read_table(project, "big_orders").column("id").to_pylist()
    assert sorted(ids) == [6, 7, 8, 9, 10]
    again = admin.run_pipeline(
        project, pipeline.model_copy(update={"sources": {"orders": "orders"}})
    )
    assert [(i.table, i.version) for i in again.inputs] == [("orders", 1)]
    assert (again.rows_in, again.output_version, again.rows_out) == (13, 1, 5)


def test_a_failing_python_step_is_a_failed_run_with_its_error(
    admin: Any, project: str, tmp_path: Path
) -> None:
    path = _folder(tmp_path, YAML.replace("steps:clean", "steps:explode"))
    record = admin.run_pipeline(project, path)
    assert record.status == "failed"
    assert record.error == "step 'cleaned': ValueError: boom in user code"
    assert record.output_version is None and record.finished_at is not None
    assert [s.name for s in record.steps] == ["joined"]
    with pytest.raises(NotFound):
        admin.table_info(project, "order_facts")
    (finished,) = admin.list_audit(action="pipeline.run.finish")
    assert finished.outcome == "ok"  # recording the failure worked
    assert json.loads(finished.detail)["error"] == record.error
    assert admin.list_pipeline_runs(project)[0].status == "failed"
    assert admin.lineage(project, "table_version", "orders@0").edges == []


def test_a_missing_module_and_a_bad_return_are_failed_runs(
    admin: Any, project: str, tmp_path: Path
) -> None:
    record = admin.run_pipeline(project, _folder(tmp_path, YAML.replace("steps:clean", "nope:f")))
    assert record.status == "failed" and "ModuleNotFoundError" in record.error

    def wrong(batches: Any) -> Any:
        return 42

    pipeline = Pipeline(
        name="wrong", sources={"orders": "orders"}, transforms=[python("w", wrong)],
        output={"table": "w"},
    )  # fmt: skip
    record = admin.run_pipeline(project, pipeline)
    assert record.error == "step 'w': TypeError: returned int, not record batches"


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ("attach 'x.db' as x", "only SELECT queries are allowed here, not ATTACH"),
        ("copy orders to '/tmp/leak.csv'", "only SELECT queries are allowed here, not COPY"),
        ("select 1; select 2", "give one statement, not 2"),
        ("select * from other.secrets", "names a schema or catalog"),
        ("select * from secrets", "reads 'secrets', which is no source or earlier step"),
        ("select * from orders@1", "pin it in sources instead"),
    ],
)
def test_forbidden_sql_is_refused_before_the_run(
    admin: Any, project: str, tmp_path: Path, query: str, refusal: str
) -> None:
    spec = YAML.replace(
        "select o.id, o.amount, c.country\n      from orders o join customers c on "
        "o.customer = c.customer",
        query,
    )
    with pytest.raises(InvalidInput, match=refusal):
        admin.run_pipeline(project, _folder(tmp_path, spec))
    assert admin.list_pipeline_runs(project) == []


def test_sql_reading_files_fails_in_the_sandbox(admin: Any, project: str) -> None:
    pipeline = Pipeline(
        name="leak",
        sources={"orders": "orders"},
        transforms=[sql("leak", "select * from read_csv('/etc/passwd'), orders")],
        output={"table": "leak"},
    )
    record = admin.run_pipeline(project, pipeline)
    assert record.status == "failed"
    assert record.error.startswith("step 'leak': InvalidInput: the query failed: Permission Error")
    with pytest.raises(NotFound):
        admin.table_info(project, "leak")


def test_sources_outside_the_project_are_not_found(server: Any, admin: Any, project: str) -> None:
    admin.create_project("vault")
    admin.write_table("vault", "secrets", pa.table({"id": [1]}))
    steal = Pipeline(name="steal", sources={"secrets": "secrets"}, output={"table": "stolen"})
    with pytest.raises(NotFound, match="table 'secrets' not found"):
        admin.run_pipeline(project, steal)
    admin.create_user("eve", password="correct horse battery")
    with server.client(admin.create_token("eve", user="eve").token) as eve:
        copy = steal.model_copy(update={"sources": {"orders": "orders"}})
        with pytest.raises(NotFound):
            eve.run_pipeline(project, copy)
        with pytest.raises(NotFound):
            eve.list_pipeline_runs(project)
    assert admin.list_pipeline_runs(project) == []
    with pytest.raises(NotFound):
        admin.table_info(project, "stolen")


def test_the_server_checks_what_a_runner_reports(admin: Any, project: str) -> None:
    start = {
        "pipeline": "p",
        "spec_digest": "0" * 64,
        "inputs": [{"table": "orders", "version": 0}],
        "output_table": "out",
    }
    with pytest.raises(NotFound, match="table 'orders' has no version 7"):
        admin.create_pipeline_run(project, {**start, "inputs": [{"table": "orders", "version": 7}]})
    with pytest.raises(NotFound, match="job 999 not found"):
        admin.create_pipeline_run(project, {**start, "job_id": 999})
    run = admin.create_pipeline_run(project, start)
    assert run.status == "running"
    with pytest.raises(NotFound, match="table 'out' not found"):
        admin.finish_pipeline_run(project, run.id, {"status": "succeeded", "output_version": 0})
    with pytest.raises(Conflict, match="names the output version"):
        admin.finish_pipeline_run(project, run.id, {"status": "succeeded"})
    failed = admin.finish_pipeline_run(project, run.id, {"status": "failed", "error": "x"})
    assert failed.status == "failed" and failed.error == "x"
    with pytest.raises(Conflict, match="has ended already"):
        admin.finish_pipeline_run(project, run.id, {"status": "failed"})
    with pytest.raises(NotFound):
        admin.read_pipeline_run(project, run.id + 100)


def test_a_run_whose_job_no_longer_runs_is_settled_as_failed(admin: Any, project: str) -> None:
    # the job's attempt is over (here: cancelled) while its run is still recorded running
    job = admin.submit_job(project, ["python", "-c", "pass"])
    admin.cancel_job(project, job.id)
    start = {
        "pipeline": "p",
        "spec_digest": "0" * 64,
        "inputs": [{"table": "orders", "version": 0}],
        "output_table": "out",
        "job_id": job.id,
    }
    run = admin.create_pipeline_run(project, start)
    (listed,) = admin.list_pipeline_runs(project)
    assert (listed.id, listed.status) == (run.id, "failed")
    assert listed.error == f"its job {job.id} is cancelled: the attempt that ran it ended first"
    with pytest.raises(Conflict, match="has ended already"):
        admin.renew_pipeline_run_lease(project, run.id)
    (entry,) = admin.list_audit(action="pipeline.run.expire")
    assert (entry.actor, entry.project) == ("system", project)


# -- the spec, without a server -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (YAML.replace("python: steps:clean", "python: steps.clean"),
         "pipeline.yaml line 11: transforms[1]: python must be MODULE:FUNCTION"),
        (YAML.replace("  mode: overwrite", "  mode: upsert"),
         "pipeline.yaml line 15: output.mode: Input should be 'append', 'overwrite' or 'merge'"),
        (YAML.replace("  - name: joined", "  - name: orders"),
         "the name 'orders' is taken already"),
        (YAML.replace("sources:", "source:"), "pipeline.yaml line 3: source: Extra inputs"),
        (YAML + "  colour: red\n", "pipeline.yaml line 16: output.colour: Extra inputs"),
        ("name: [unclosed", "pipeline.yaml line 1: not valid YAML"),
        ("- a list", "a pipeline is a YAML mapping"),
    ],
)  # fmt: skip
def test_spec_errors_name_the_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        load(_folder(tmp_path, text))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_python_step_input_defaults_and_checks() -> None:
    spec = Pipeline(
        name="p",
        sources={"a": "a", "b": "b@2"},
        transforms=[python("x", "m:f", input="b"), python("y", "m:f")],
        output={"table": "t"},
    )
    assert spec.input_of(0) == "b" and spec.input_of(1) == "x"
    assert spec.source_refs() == {"a": ("a", None), "b": ("b", 2)}
    with pytest.raises(ValueError, match="with several sources, say which is the input"):
        Pipeline(name="p", sources={"a": "a", "b": "b"}, transforms=[python("x", "m:f")],
                 output={"table": "t"})  # fmt: skip
    with pytest.raises(ValueError, match="input 'zz' is no source or earlier step"):
        Pipeline(name="p", sources={"a": "a"}, transforms=[python("x", "m:f", input="zz")],
                 output={"table": "t"})  # fmt: skip
    with pytest.raises(ValueError, match="a merge needs keys"):
        Pipeline(name="p", sources={"a": "a"}, output={"table": "t", "mode": "merge"})
    assert isinstance(Reject(pa.table({"a": [1]}), "why").reason, str)


def test_outputs_and_rejected_rows_are_masked_like_any_write(admin: Any, project: str) -> None:
    def contact(batches: Any) -> Any:
        for batch in batches:
            emails = pa.array([f"user{i}@example.com" for i in batch.column("id").to_pylist()])
            with_email = batch.append_column("email", emails)
            yield Reject(with_email.slice(0, 1), "first row")
            yield with_email.slice(1)

    pipeline = Pipeline(
        name="contacts",
        sources={"orders": "orders"},
        transforms=[python("contact", contact)],
        output={"table": "contacts"},
    )
    record = admin.run_pipeline(project, pipeline)
    assert (record.status, record.rows_out, record.rows_rejected) == ("succeeded", 9, 1)
    emails = admin.read_table(project, "contacts").column("email").to_pylist()
    assert all(e.startswith("tok_email_") for e in emails)
    (rejected,) = admin.read_table(project, "contacts_rejected").to_pylist()
    assert "user1@example.com" not in rejected["row"] and "tok_email_" in rejected["row"]


def test_viewers_read_runs_but_only_members_run_them(
    server: Any, admin: Any, project: str, tmp_path: Path
) -> None:
    from underlay.errors import PermissionDenied

    admin.run_pipeline(project, _folder(tmp_path))
    admin.create_user("vic", password="correct horse battery")
    admin.add_member(project, "vic", "viewer")
    with server.client(admin.create_token("vic", user="vic").token) as vic:
        (run,) = vic.list_pipeline_runs(project)
        assert vic.read_pipeline_run(project, run.id).status == "succeeded"
        with pytest.raises(PermissionDenied):
            vic.run_pipeline(project, _folder(tmp_path))
    assert len(admin.list_pipeline_runs(project)) == 1


def test_deleting_the_project_deletes_its_runs(admin: Any, project: str, tmp_path: Path) -> None:
    admin.run_pipeline(project, _folder(tmp_path))
    admin.delete_project(project)
    admin.create_project(project)
    assert admin.list_pipeline_runs(project) == []
