"""``underlay models``: the model registry (register, aliases and their history, cards)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from underlay.cli.common import (
    Col,
    JsonOpt,
    ProjectOpt,
    YesOpt,
    client,
    delete_in_project,
    parse_moment,
    print_json,
    project_of,
    show,
    when,
)

models = typer.Typer(
    help="Registered models: signed versions, aliases, cards.", no_args_is_help=True
)

RefArg = Annotated[str, typer.Argument(metavar="NAME[@VERSION|@ALIAS]")]


def _aliases(row: dict[str, Any]) -> str:
    aliases = row.get("aliases") or {}
    if isinstance(aliases, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(aliases.items()))
    return ", ".join(str(a) for a in aliases) if isinstance(aliases, list) else ""


@models.command("ls")
def models_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List the project's models with their latest version and aliases."""
    with client() as c:
        rows = c.list_models(project_of(project))
    cols: list[str | Col] = ["name", "latest_version", Col("aliases", fmt=_aliases)]
    cols.append("description")
    show(rows, cols, as_json=json_)


@models.command("show")
def models_show(ref: RefArg, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Show a model (NAME) or one version of it (NAME@3, NAME@champion)."""
    with client() as c:
        if "@" not in ref:
            model = c.read_model(project_of(project), ref)
            fields: list[str | Col] = ["name", "latest_version", Col("aliases", fmt=_aliases)]
            show(model, [*fields, "license", "data_license", "description"], as_json=json_)
            return
        version = c.read_model_version(project_of(project), ref)
    cols: list[str | Col] = ["model", "version", "flavor", "run", "artifact_path", "signed"]
    show(version, [*cols, "key_id", Col("aliases", fmt=_aliases)], as_json=json_)


@models.command("versions")
def models_versions(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List a model's versions, newest first."""
    with client() as c:
        rows = c.list_model_versions(project_of(project), name)
    cols: list[str | Col] = ["version", "flavor", "run", "artifact_path"]
    cols.append(Col("aliases", fmt=_aliases))
    show(rows, [*cols, "file_count", when("created_at")], as_json=json_)


@models.command("register")
def models_register(
    name: str,
    run: Annotated[int, typer.Option("--run", help="The run that logged the model.")],
    path: Annotated[str, typer.Option("--path", help="The model's artifact path in the run.")],
    project: ProjectOpt = None,
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    json_: JsonOpt = False,
) -> None:
    """Sign a run's logged model as the next version of NAME; prints the version."""
    with client() as c:
        version = c.register_model(
            project_of(project), name, run=run, path=path, description=description
        )
    if json_:
        typer.echo(version.model_dump_json(indent=2))
        return
    typer.echo(str(version.version))


@models.command("alias")
def models_alias(
    name: str,
    alias: str,
    version: Annotated[int | None, typer.Argument(help="Omit with --remove.")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why it moves (recorded).")] = "",
    remove: Annotated[bool, typer.Option("--remove", metavar="", help="Drop the alias.")] = False,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Point ALIAS at VERSION (or drop it with --remove); every move is recorded with who,
    when and --reason."""
    from underlay.errors import InvalidInput

    if not reason.strip():
        raise InvalidInput("say why the alias moves: --reason TEXT")
    with client() as c:
        if remove:
            event = c.remove_alias(project_of(project), name, alias, reason=reason)
        elif version is None:
            raise InvalidInput("give the VERSION the alias should name (or --remove)")
        else:
            event = c.set_alias(project_of(project), name, alias, version, reason=reason)
    if json_:
        typer.echo(event.model_dump_json(indent=2))
        return
    before = "none" if event.previous_version is None else str(event.previous_version)
    after = "none" if event.version is None else str(event.version)
    typer.echo(f"{name}@{alias}: {before} -> {after}")


@models.command("history")
def models_history(
    name: str,
    project: ProjectOpt = None,
    alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
    at: Annotated[
        str | None,
        typer.Option(help="Which version each alias named then: an ISO time or an age (2d)."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Every alias move (who, when, why); with --at, which version each alias named then."""
    moment = parse_moment(at, "--at") if at else None
    with client() as c:
        history = c.alias_history(project_of(project), name, alias=alias, at=moment)
    if json_:
        print_json(history.model_dump(mode="json"))
        return
    show(
        history.events,
        ["alias", "version", "previous_version", "actor", when("at"), "reason"],
        as_json=False,
    )
    if moment is not None or alias is not None:
        for key, version in sorted(history.held.items()):
            typer.echo(f"{key}: {'none' if version is None else version}")


@models.command("card")
def models_card(
    ref: RefArg,
    project: ProjectOpt = None,
    html: Annotated[bool, typer.Option("--html", metavar="", help="HTML, not Markdown.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Print a version's model card (Markdown, or --html): intended use, training data,
    metrics, evaluation slices, limitations, licences."""
    with client() as c:
        card = c.model_card(project_of(project), ref, html=html)
    if json_:
        typer.echo(card.model_dump_json(indent=2))
    elif output is not None:
        output.write_text(card.text, encoding="utf-8")
        typer.echo(f"wrote {output}")
    else:
        typer.echo(card.text, nl=False)


@models.command("update")
def models_update(
    name: str,
    project: ProjectOpt = None,
    description: Annotated[str | None, typer.Option(help="One line.")] = None,
    intended_use: Annotated[str | None, typer.Option(help="For the card.")] = None,
    limitations: Annotated[str | None, typer.Option(help="For the card.")] = None,
    license_: Annotated[str | None, typer.Option("--license", help="The model's licence.")] = None,
    data_license: Annotated[str | None, typer.Option(help="The training data's licence.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Set a model's card fields: description, intended use, limitations, licences."""
    with client() as c:
        model = c.update_model(
            project_of(project),
            name,
            description=description,
            intended_use=intended_use,
            limitations=limitations,
            license=license_,
            data_license=data_license,
        )
    if json_:
        typer.echo(model.model_dump_json(indent=2))
        return
    typer.echo(f"updated model {name}")


@models.command("rm")
def models_rm(name: str, project: ProjectOpt = None, yes: YesOpt = False) -> None:
    """Delete a model, its versions, aliases and history (the runs keep their artifacts)."""
    project_name = delete_in_project("model", name, project, yes, "all its versions")
    with client() as c:
        c.delete_model(project_name, name)
    typer.echo(f"deleted model {name}")


@models.command("export")
def models_export(
    ref: RefArg,
    project: ProjectOpt = None,
    format_: Annotated[
        str, typer.Option("--format", help="The export format (onnx only).")
    ] = "onnx",
    quantize: Annotated[
        str, typer.Option(help="none, int8 (dynamic) or int8-static (needs --calibration).")
    ] = "none",
    held_out: Annotated[
        str | None,
        typer.Option("--held-out", metavar="TABLE[@V]", help="Rows to measure accuracy on."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="The held-out table's label column.")] = None,
    tolerance: Annotated[
        float,
        typer.Option(help="Largest accepted change: accuracy points, or RMSE in % of label std."),
    ] = 1.0,
    calibration: Annotated[
        str | None,
        typer.Option(metavar="TABLE[@V]", help="Rows to calibrate int8-static with."),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="The model to register into (NAME-onnx).")
    ] = None,
    runs: Annotated[int, typer.Option(help="Timed predict calls per latency figure.")] = 100,
    json_: JsonOpt = False,
) -> None:
    """Export a version to ONNX (optionally int8), report size, latency and accuracy against
    the original, and register it as the next version of NAME-onnx; refused, registering
    nothing, when accuracy moves beyond --tolerance."""
    from underlay.errors import InvalidInput

    if format_ != "onnx":
        raise InvalidInput(f"--format {format_[:40]!r} is not supported: use --format onnx")
    with client() as c:
        exported = c.export_model(
            project_of(project),
            ref,
            quantize=quantize,
            held_out=held_out,
            label=label,
            tolerance=tolerance,
            target=to,
            calibration=calibration,
            runs=runs,
        )
    if json_:
        print_json(exported.model_dump(mode="json"))
        return
    report, version = exported.report, exported.version
    last, first = report["variants"][-1], report["variants"][0]
    unit = "points" if report["metric"] == "accuracy" else "% of label std"
    typer.echo(
        f"registered {version.model}@{version.version} ({last['name']}) from "
        f"{exported.source.model}@{exported.source.version}"
    )
    for variant in report["variants"]:
        typer.echo(
            f"  {variant['name']:17} {variant['size_bytes']:>10,} bytes  "
            f"1 row p50 {variant['single_row']['p50_ms']:.3f} ms  "
            f"batch of {report['batch_rows']} p50 {variant['batch']['p50_ms']:.3f} ms  "
            f"{report['metric']} {variant['metric']:.4g}"
        )
    typer.echo(
        f"  size x{last['size_bytes'] / max(first['size_bytes'], 1):.3f}, batch latency "
        f"x{report['latency_ratio']:.3f}, {report['metric']} change {report['change']:+.3f} "
        f"{unit} (tolerance {report['tolerance']:g}, on {report['evaluation_rows']} "
        f"{report['evaluated_on']} rows)"
    )
    for note in report["notes"]:
        typer.echo(f"  note: {note}")
