"""``underlay tables`` and ``underlay sql``: Delta tables of a project and SQL over them."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from underlay.cli.common import (
    Col,
    JsonOpt,
    ProjectOpt,
    YesOpt,
    client,
    delete_in_project,
    parse_ref,
    project_of,
    show,
)
from underlay.data.arrowio import json_default

tables = typer.Typer(help="Tables (Delta Lake): ingest, inspect, read.", no_args_is_help=True)


@tables.command("ingest")
def tables_ingest(
    name: str,
    source: Annotated[
        str,
        typer.Argument(
            help="A CSV, Parquet or JSON-lines file, a folder of such files (one format, "
            "written as one version), or a database URL "
            "(postgresql://me@host/db, sqlite:///shop.db) read from here."
        ),
    ],
    project: ProjectOpt = None,
    mode: Annotated[str, typer.Option(help="append, overwrite or merge.")] = "append",
    key: Annotated[
        list[str] | None, typer.Option("--key", "-k", help="Key column(s) of a merge.")
    ] = None,
    evolve_schema: Annotated[
        bool,
        typer.Option(
            "--evolve-schema", metavar="", help="Let the write add columns or change types."
        ),
    ] = False,
    format: Annotated[
        str | None, typer.Option("--format", help="csv, parquet or jsonl (else by suffix).")
    ] = None,
    pii: Annotated[
        list[str] | None,
        typer.Option(
            "--pii",
            metavar="COLUMN=POLICY",
            help="redact, partial, tokenize or keep:why (repeat); other PII is tokenised.",
        ),
    ] = None,
    checks: Annotated[
        str | None,
        typer.Option(
            "--checks",
            metavar="FILE",
            help="Declare these quality checks (YAML or JSON) first: a new table is gated "
            "from its first version.",
        ),
    ] = None,
    source_table: Annotated[
        str | None,
        typer.Option("--source-table", help="The database table to load (schema.table)."),
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", help="A SELECT to load instead of a table.")
    ] = None,
    watermark: Annotated[
        str | None,
        typer.Option(
            "--watermark",
            metavar="COLUMN",
            help="Load only rows above the last load's highest COLUMN value.",
        ),
    ] = None,
    subject_key: Annotated[
        str | None,
        typer.Option("--subject-key", metavar="COLUMN", help="The data-subject key column."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Load a file, a folder of files, or a table or query of a database, into a table as
    its next version; unreadable rows are quarantined and personal data is masked (tokenised
    unless a --pii policy says otherwise).

    The version is published only if the table's blocking quality checks pass: else it is
    recorded as rejected, the report is printed and the command exits with 1."""
    from pathlib import Path

    from underlay.data.privacy import parse_policies
    from underlay.errors import InvalidInput

    if mode not in ("append", "overwrite", "merge"):
        raise InvalidInput(f"--mode must be append, overwrite or merge, not {mode!r}")
    is_url = "://" in source
    if not is_url and (source_table or query or watermark):
        raise InvalidInput("--source-table, --query and --watermark need a database URL")
    path = Path(source)
    if not is_url and not (path.is_file() or path.is_dir()):
        raise InvalidInput(f"{source} is not a file or a folder")
    spec = None
    if checks is not None:
        from underlay.data.quality import read_spec

        spec = read_spec(checks)
    with client() as c:
        if is_url:
            if spec is not None:
                c.set_table_checks(project_of(project), name, spec, create=True)
            result = c.ingest_sql(
                project_of(project),
                name,
                source,
                table=source_table,
                query=query,
                watermark=watermark,
                mode=mode,
                key=key or [],
                evolve=evolve_schema,
                pii=parse_policies(pii or []),
                subject_key=subject_key,
            )
        else:
            result = c.write_table(
                project_of(project),
                name,
                path,
                mode=mode,
                key=key or [],
                evolve=evolve_schema,
                format=format,
                pii=parse_policies(pii or []),
                checks=spec,
                subject_key=subject_key,
            )
    if json_:
        typer.echo(result.model_dump_json(indent=2))
        if not result.published:
            raise typer.Exit(1)
        return
    if not result.created:
        since = f" since {name}@{result.version}" if result.version is not None else ""
        typer.echo(f"{name}: no new rows{since}; nothing written")
        return
    if result.published:
        files = f" from {result.files} files" if result.files is not None else ""
        typer.echo(
            f"{name}@{result.version}: {result.rows_written} rows written{files} "
            f"({result.operation}), {result.num_rows} in the table"
        )
    else:
        failed = (result.quality or {}).get("failed", [])
        typer.echo(
            f"{name}@{result.version} rejected: {len(failed)} blocking quality check(s) failed; "
            "it is not published and readers keep the previous version"
        )
    for column in (result.pii or {}).get("columns", []):
        if column["types"]:
            how = column["policy"] + (" (by default)" if column["default"] else "")
            typer.echo(
                f"PII in {column['column']}: {', '.join(column['types'])} -> {how}", err=True
            )
    if result.rows_quarantined:
        typer.echo(
            f"{result.rows_quarantined} rows quarantined in {result.quarantine_table}"
            f"@{result.quarantine_version} with their line and reason",
            err=True,
        )
    _report(result.quality, quiet_when_passed=True)
    if not result.published:
        raise typer.Exit(1)


def _report(report: dict[str, Any] | None, *, quiet_when_passed: bool = False) -> None:
    """A quality report as one line per check and the sampled failing rows."""
    from underlay.data.quality import summary

    if not report or (quiet_when_passed and not report["failed"] and not report["warnings"]):
        return
    typer.echo(f"quality checks on {report['rows']:,} rows:")
    for line in summary(report):
        typer.echo(line)


@tables.command("ls")
def tables_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List the project's tables and their published versions."""
    with client() as c:
        rows = c.list_tables(project_of(project))
    show(rows, ["name", "version", "created_at"], as_json=json_)


@tables.command("show")
def tables_show(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """A table's columns and published version."""
    with client() as c:
        info = c.table_info(project_of(project), name)
    if json_:
        typer.echo(info.model_dump_json(indent=2))
        return
    typer.echo(f"{info.name}@{info.version}")
    if info.subject_key:
        typer.echo(f"subject key: {info.subject_key}")
    show(info.columns or [], ["name", "type"], as_json=False)


@tables.command("update")
def tables_update(
    name: str,
    project: ProjectOpt = None,
    subject_key: Annotated[
        str | None,
        typer.Option(
            "--subject-key",
            metavar="COLUMN",
            help="Declare the data-subject key column; every version is indexed by it.",
        ),
    ] = None,
    no_subject_key: Annotated[
        bool, typer.Option("--no-subject-key", metavar="", help="Drop the subject key.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Change a table's settings: its data-subject key."""
    from underlay.errors import InvalidInput

    if (subject_key is None) == (not no_subject_key):
        raise InvalidInput("give --subject-key COLUMN or --no-subject-key")
    with client() as c:
        info = c.update_table(project_of(project), name, subject_key=subject_key)
    if json_:
        typer.echo(info.model_dump_json(indent=2))
        return
    typer.echo(f"{info.name}: subject key {info.subject_key or 'none'}")


@tables.command("subject")
def tables_subject(
    value: Annotated[str, typer.Argument(help="The subject's key value (raw, not a token).")],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Every row about one data subject, in every version of every table with a subject key."""
    with client() as c:
        found = c.find_subject(project_of(project), value)
    if json_:
        typer.echo(found.model_dump_json(indent=2))
        return
    if not found.tables:
        typer.echo("no table holds that subject")
        return
    for hit in found.tables:
        now = "in" if hit.in_published else "not in"
        typer.echo(
            f"{hit.table} (key {hit.column}, stored {hit.stored_as}): "
            f"{now} the published version {hit.published_version}"
        )
        for version in hit.versions:
            more = " (more not shown)" if version.truncated else ""
            typer.echo(f"  @{version.version} {version.operation}: {len(version.rows)} rows{more}")
            for row in version.rows:
                typer.echo("    " + json.dumps(row, default=json_default))


@tables.command("versions")
def tables_versions(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """A table's versions: what each write did."""
    with client() as c:
        rows = c.table_versions(project_of(project), name)
    cols: list[str | Col] = [
        "version",
        "status",
        "operation",
        "rows_written",
        "rows_quarantined",
        "num_rows",
        "source",
        Col("watermark", fmt=_watermark),
    ]
    show(rows, cols, as_json=json_)


def _watermark(row: dict[str, Any]) -> str:
    mark = row.get("watermark")
    return f"{mark['column']} = {mark['value']}" if mark else ""


checks_app = typer.Typer(
    help="Quality checks that gate every new version of a table.", no_args_is_help=True
)
tables.add_typer(checks_app, name="checks")


@checks_app.command("set")
def checks_set(
    name: str,
    file: Annotated[str, typer.Argument(metavar="FILE", help="The checks, YAML or JSON.")],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Declare a table's quality checks (replacing its own); refused, and nothing stored, if
    a check names a column the table lacks or holds a bad regex or SQL."""
    from underlay.data.quality import read_spec

    spec = read_spec(file)
    with client() as c:
        result = c.set_table_checks(project_of(project), name, spec)
    if json_:
        typer.echo(result.model_dump_json(indent=2, exclude_none=True))
        return
    typer.echo(f"{name}: {len(result.checks)} check(s) gate every new version")


@checks_app.command("show")
def checks_show(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """A table's quality checks."""
    with client() as c:
        result = c.table_checks(project_of(project), name)
    if json_:
        typer.echo(result.model_dump_json(indent=2, exclude_none=True))
        return
    if not result.checks:
        typer.echo(f"{name} has no quality checks")
    for check in result.checks:
        fields = check.model_dump(mode="json", exclude_none=True)
        what = {k: v for k, v in fields.items() if k not in ("type", "name", "blocking")}
        mode = "blocking" if check.blocking else "warn-only"
        typer.echo(f"{check.label()} ({check.type}, {mode}): {json.dumps(what)}")


@checks_app.command("rm")
def checks_rm(name: str, project: ProjectOpt = None) -> None:
    """Remove a table's quality checks: new versions are published unchecked."""
    with client() as c:
        c.clear_table_checks(project_of(project), name)
    typer.echo(f"{name}: quality checks removed")


@tables.command("check")
def tables_check(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    project: ProjectOpt = None,
    checks: Annotated[
        str | None,
        typer.Option(
            "--checks", metavar="FILE", help="Try these checks instead of the table's own."
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Evaluate the quality checks on a published version without writing anything.

    Exits with 1 when a blocking check fails."""
    name, version = parse_ref(ref, "table")
    spec = None
    if checks is not None:
        from underlay.data.quality import read_spec

        spec = read_spec(checks)
    with client() as c:
        result = c.check_table(project_of(project), name, version=version, checks=spec)
    if json_:
        typer.echo(result.model_dump_json(indent=2))
    else:
        verdict = "passes" if result.report["passed"] else "fails"
        typer.echo(f"{name}@{result.version} {verdict} its quality checks")
        _report(result.report)
    if not result.report["passed"]:
        raise typer.Exit(1)


@tables.command("head")
def tables_head(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    project: ProjectOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Rows to print.")] = 20,
) -> None:
    """Print the first rows of a version as JSON lines."""
    name, version = parse_ref(ref, "table")
    with client() as c:
        table = c.read_table(project_of(project), name, version=version, limit=limit)
    for row in table.to_pylist():
        typer.echo(json.dumps(row, default=json_default))


@tables.command("rm")
def tables_rm(
    name: str,
    project: ProjectOpt = None,
    yes: YesOpt = False,
) -> None:
    """Delete a table, all its versions and files."""
    project_name = delete_in_project("table", name, project, yes, "all its versions")
    with client() as c:
        c.delete_table(project_name, name)
    typer.echo(f"deleted table {name}")


def sql(
    query: Annotated[str, typer.Argument(help="One SELECT; NAME@3 reads version 3.")],
    project: ProjectOpt = None,
) -> None:
    """Run SQL (DuckDB) over the project's tables; prints JSON lines as rows stream in."""
    with client() as c:
        stream = c.iter_sql(project_of(project), query)
        next(stream)  # the schema
        for batch in stream:
            for row in batch.to_pylist():
                typer.echo(json.dumps(row, default=json_default))
