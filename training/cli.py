"""`moe router ...`: train routers on the MMLU-Pro pool (mounted in the main CLI; runnable alone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from routers.features import DEFAULT_KIND, KINDS

app = typer.Typer(help="Train routers and write their versioned artifacts.", no_args_is_help=True)
console = Console()


@app.callback()
def main() -> None:
    """Train routers and write their versioned artifacts."""


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """`on_start(stage, total)` for the work below: a rich progress bar per stage, advanced by what it returns."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:

        def on_start(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda done: progress.advance(task, done)

        yield on_start


@app.command()
def train(
    family: Annotated[str, typer.Option(help="router family to train")] = "embedding-domain",
    out: Annotated[Path | None, typer.Option(help="artifact directory (default: var/routers/<family>)")] = None,
    limit: Annotated[int | None, typer.Option(min=14, help="train on N train and N dev questions only")] = None,
    pool_dir: Annotated[
        Path | None,
        typer.Option(help="MMLU-Pro pool directory (default: $MOE_POOL_DIR, else ../shared/data/mmlu_pro_pool)"),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="a routing JSONL file or a pool directory (default: the MMLU-Pro pool)")
    ] = None,
    experts: Annotated[str | None, typer.Option(help="only these experts of the data, comma-separated")] = None,
    features: Annotated[
        str | None,
        typer.Option(help="what the router reads of a query: " + ", ".join(KINDS) + " (default: the family chooses on dev)"),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML whose `experts:` the router routes between")] = None,
) -> None:
    """Train on a dataset's train split, evaluate on dev, keep its cost-quality frontier on test (the dashboard plots
    it), save router.json and the model files."""
    import importlib.util

    from training.train import DEFAULT_CONFIG, train_router

    if importlib.util.find_spec("sklearn") is None:
        console.print("[red]training needs the train extra[/red]: pip install 'moe-gateway[train]' (make setup has it)")
        raise typer.Exit(1)

    if features is not None and features not in KINDS:
        raise typer.BadParameter(f"unknown feature kind {features!r}; known: {', '.join(KINDS)}", param_hint="--features")
    directory = out or Path("var/routers") / family
    console.print(f"training [bold]{family}[/] -> {directory}")
    result = train_router(
        family,
        directory,
        config=config or DEFAULT_CONFIG,
        pool_dir=pool_dir,
        limit=limit,
        dataset=data,
        experts=experts.split(",") if experts else None,
        features=features,
    )
    manifest = result.router.manifest
    assert manifest is not None
    table = Table(title=f"{manifest.family} {manifest.version}", show_header=False)
    table.add_row("artifact", str(result.directory))
    table.add_row("experts", ", ".join(manifest.experts))
    table.add_row("data hash", manifest.data_hash)
    for metric, value in manifest.metrics.items():
        table.add_row(metric, f"{value:.4f}" if not float(value).is_integer() else f"{value:.0f}")
    table.add_row("cost-quality", _frontier_summary(manifest.params))
    table.add_row("seconds", f"{result.seconds:.1f}")
    console.print(table)


def _frontier_summary(params: dict[str, Any]) -> str:
    points = params.get("cost_quality")
    if not points:
        return "none kept: no held-out split of the data scores the experts it routes between"
    cheapest, dearest = points[0], points[-1]
    return (
        f"{len(points)} frontier points on the {params['cost_quality_split']} split, accuracy "
        f"{cheapest['accuracy']:.3f} at ${cheapest['cost']:.4f} to {dearest['accuracy']:.3f} at ${dearest['cost']:.4f} "
        "per 1k queries"
    )


@app.command("eval")
def eval_(
    routers: Annotated[list[Path] | None, typer.Argument(help="router artifact directories to replay")] = None,
    data: Annotated[
        str | None, typer.Option(help="a routing JSONL file or a pool directory (default: the MMLU-Pro pool)")
    ] = None,
    experts: Annotated[str | None, typer.Option(help="scenario: only these experts, comma-separated")] = None,
    split: Annotated[str, typer.Option(help="split to replay on")] = "test",
    baselines: Annotated[
        str, typer.Option(help="comma-separated: random, single, oracle, true-label, logistic, knn ('' for none)")
    ] = "random,single,oracle,true-label,logistic,knn",
    knn_k: Annotated[int, typer.Option(min=1, help="neighbours of the knn baseline")] = 40,
    latency_queries: Annotated[int, typer.Option(min=0, help="queries routed one at a time for latency")] = 200,
    json_out: Annotated[Path, typer.Option("--json", help="report JSON path")] = Path("var/eval/routing.json"),
    png_out: Annotated[Path, typer.Option("--png", help="cost-quality plot path")] = Path("var/eval/routing.png"),
) -> None:
    """Replay routers and baselines on a split: cost-quality curves, AUC, oracle gap, latency; JSON + PNG."""
    import json
    import shlex
    import sys

    from training.dataset import load_dataset
    from training.evaluate import run_scenario, summary_table
    from training.evaluation_plot import plot

    dataset = load_dataset(data)
    if experts:
        dataset = dataset.with_experts([name.strip() for name in experts.split(",") if name.strip()])
    names = [name.strip() for name in baselines.split(",") if name.strip()]
    with progress_bars() as on_start:
        report = run_scenario(
            dataset, split, routers or [], names, knn_k=knn_k, latency_queries=latency_queries, on_start=on_start
        )
    scenario = ",".join(dataset.experts) if experts else "all experts"
    report["command"] = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    plot({scenario: report}, png_out)
    console.print(summary_table(report, f"{split} split, {scenario}"), width=None if console.is_terminal else 150)
    for skipped in report["skipped"]:
        console.print(
            f"[yellow]skipped[/] {skipped['name']}: its experts {skipped['experts']} do not cover the scenario"
        )
    console.print(f"wrote {json_out} and {png_out}")


# -- versions in the database: what every gateway replica serves -----------------------------------
# The gateway's own default (gateway/settings.py): the same DATABASE_URL finds the same log and versions.
DatabaseUrl = Annotated[str, typer.Option(envvar="DATABASE_URL", help="the decision log's database")]
DEFAULT_DATABASE_URL = "sqlite:///var/moe.db"


def _versions(database_url: str, change: Callable[[Any], Any]) -> Any:
    """`change` applied to the router versions at `database_url` (a RouterVersions; imported late like every
    command's work); what cannot be done is said in red with exit status 1."""
    from sqlalchemy import create_engine

    from migrations.router_versions import RouterVersions, VersionError

    try:
        return change(RouterVersions(create_engine(database_url)))
    except (VersionError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _version_table(versions: list) -> Table:  # noqa: ANN001 - VersionInfo rows
    table = Table("id", "router", "version", "family", "status", "A/B share", "parent", "updated")
    for v in versions:
        table.add_row(str(v.id), v.router, v.version, v.family, v.status,
                      f"{v.traffic_share:.0%}" if v.traffic_share else "", str(v.parent_id or ""),
                      f"{v.updated_at:%Y-%m-%d %H:%M:%S}")
    return table


@app.command()
def register(
    router: Annotated[str, typer.Argument(help="the config's router name (routers: - name:)")],
    artifact: Annotated[Path, typer.Argument(help="a trained artifact directory")],
    status: Annotated[str, typer.Option(help="candidate, shadow, active or retired")] = "candidate",
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """Store a trained artifact in the database as a version of ROUTER (every replica can then load it)."""
    info = _versions(database_url, lambda versions: versions.register(router, artifact, status=status))
    console.print(f"{router} version {info.id} ({info.version}) is {info.status}")


@app.command()
def versions(
    router: Annotated[str | None, typer.Argument(help="only this router's versions")] = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """Router versions in the database, oldest first."""
    console.print(_version_table(_versions(database_url, lambda versions: versions.list(router))))


@app.command()
def promote(
    version_id: Annotated[int, typer.Argument(help="the version's id (`moe router versions`)")],
    to: Annotated[str, typer.Option(help="active (serve it; the active one retires) or shadow")] = "active",
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """Make a version active (every replica serves it within MOE_ROUTER_POLL_S) or shadow."""
    if to not in ("active", "shadow"):
        raise typer.BadParameter("active or shadow", param_hint="--to")
    info = _versions(database_url, lambda versions: versions.set_status(version_id, to))
    console.print(f"{info.router} version {info.id} ({info.version}) is {info.status}")


@app.command()
def ab(
    version_id: Annotated[int, typer.Argument(help="a candidate version's id (`moe router versions`)")],
    share: Annotated[float, typer.Option(help="share of API keys or users it serves, 0 to below 1 (0 ends the test)")],
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """A/B: a candidate serves this share of API keys or users (sticky) beside the active version."""
    info = _versions(database_url, lambda versions: versions.set_share(version_id, share))
    console.print(f"{info.router} version {info.id} ({info.version}) serves {share:.0%} of keys and users")


@app.command()
def revert(
    router: Annotated[str, typer.Argument(help="the config's router name")],
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """Retire ROUTER's active version and serve the one active before it again."""
    info = _versions(database_url, lambda versions: versions.revert(router))
    console.print(f"{info.router} version {info.id} ({info.version}) is active again")



# -- retraining from the decision log, and the gate a version passes before promotion ---------------
def _moment(text: str | None, option: str) -> datetime | None:
    """An ISO date or time; without a zone, UTC (the log's clock)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"an ISO date or time such as 2025-03-01 or 2025-03-01T12:00:00Z, not {text!r}",
                                 param_hint=option) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def retrain(
    router: Annotated[str, typer.Option(help="the config's router name (routers: - name:)")],
    out: Annotated[Path, typer.Option(help="artifact directory for the candidate")],
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    config: Annotated[Path | None, typer.Option(help="gateway YAML: the router's experts and virtual models")] = None,
    family: Annotated[
        str, typer.Option(help="a family that learns from partial rewards (reward-distilled: each expert's reward "
                          "learnt from the requests it answered)")
    ] = "reward-distilled",
    since: Annotated[str | None, typer.Option(help="ISO time: decisions made from then on")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time: decisions made before then (default: now)")] = None,
    feedback_source: Annotated[
        list[str] | None, typer.Option(help="only feedback from this source, e.g. user or judge (repeatable)")
    ] = None,
    base_data: Annotated[
        str | None, typer.Option(help="a pool directory or a routing JSONL: mixed in, and replayed on its test split")
    ] = None,
    base_share: Annotated[float, typer.Option(min=0, max=0.95, help="share of the training rows from --base-data")] = 0.5,
    holdout: Annotated[float, typer.Option(min=0.01, max=0.9, help="share of the records held out to value it")] = 0.2,
    weighting: Annotated[str, typer.Option(help="none, or ips: weigh each record by 1 / its propensity")] = "none",
    predicted_weight: Annotated[float | None, typer.Option(
        min=0.0, help="fill the rewards the log does not know (the experts not chosen) with the parent's predictions, "
        "each counting this much of an observed reward; 0: learn from the observed ones alone  [default: 0.1]",
        show_default=False)] = None,
    features: Annotated[str, typer.Option(help="what the router reads of a query: " + ", ".join(KINDS))] = DEFAULT_KIND,
    register: Annotated[bool, typer.Option(help="register the candidate in the database")] = True,
) -> None:
    """Train a candidate version on the feedback in the decision log, value it off-policy on held-out records,
    replay it on the base data, write its artifact and register it as a candidate."""
    import importlib.util

    from sqlalchemy.exc import SQLAlchemyError

    from migrations.router_versions import VersionError
    from training.retrain import RetrainError, RetrainRequest
    from training.retrain import retrain as run_retrain
    from training.train import DEFAULT_CONFIG

    if importlib.util.find_spec("sklearn") is None:
        console.print("[red]training needs the train extra[/red]: pip install 'moe-gateway[train]' (make setup has it)")
        raise typer.Exit(1)
    if feedback_source and any(not s.strip() for s in feedback_source):
        raise typer.BadParameter("a source name is not empty", param_hint="--feedback-source")
    request = RetrainRequest(
        router=router, out=out, database_url=database_url, config=config or DEFAULT_CONFIG, family=family,
        since=_moment(since, "--since"), until=_moment(until, "--until"), sources=tuple(feedback_source or ()),
        base_data=base_data, base_share=base_share, holdout=holdout, weighting=weighting, features=features,
        register=register, **({} if predicted_weight is None else {"predicted_weight": predicted_weight}),
    )
    try:
        with progress_bars() as on_start:
            result = run_retrain(request, on_start)
    except (RetrainError, VersionError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        console.print(f"[red]the decision log at --database-url cannot be read: {getattr(exc, 'orig', None) or exc}"
                      "[/red] (is it migrated? moe db upgrade)")
        raise typer.Exit(1) from None
    manifest = result.manifest
    if result.existing:
        console.print(f"already retrained from the same data: {router} {manifest.version}")
    where = f" at {result.directory}" if result.directory else ""
    status = "not registered" if result.version_id is None else f"version {result.version_id}"
    console.print(f"{router} {status} ({manifest.version}){where}")
    table = Table(title=f"{manifest.family} {manifest.version}", show_header=False)
    retrained = manifest.params.get("retrain", {})
    table.add_row("parent", f"{retrained.get('parent_version')} (id {retrained.get('parent_id')})")
    table.add_row("window", f"{retrained.get('since') or 'start'} to {retrained.get('until')}")
    table.add_row("records", f"{retrained.get('records')} (held out {retrained.get('holdout_records')}; dropped "
                  f"{retrained.get('dropped_without_prompt')} without a stored prompt, "
                  f"{retrained.get('dropped_unknown_expert')} for unconfigured experts)")
    table.add_row("data hash", manifest.data_hash)
    for metric, value in sorted(manifest.metrics.items()):
        table.add_row(metric, f"{value:.4f}")
    console.print(table)


@app.command()
def gate(
    router: Annotated[str, typer.Option(help="the config's router name")],
    version: Annotated[str, typer.Option(help="the version's id (`moe router versions`) or its version string")],
    profile: Annotated[Path, typer.Option(help="gate profile JSON (example: training/gates/default.json)")],
    promote: Annotated[bool, typer.Option(help="make the version active when every check passes")] = False,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
) -> None:
    """Check a version's metrics against a gate profile: exit 0 when every check passes, 1 otherwise (a metric the
    version lacks fails its check); with --promote, a version that passes becomes active."""
    from training.gate import load_profile, run_gate

    try:
        checks = load_profile(profile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--profile") from None
    found = [info for info in _versions(database_url, lambda versions: versions.list(router))
             if version in (str(info.id), info.version)]
    if not found:
        console.print(f"[red]{router} has no version {version!r}[/red] (see moe router versions)")
        raise typer.Exit(1)
    outcomes = run_gate(checks, found[0].metrics)
    table = Table("metric", "value", "threshold", "", title=f"{router} version {found[0].id} ({found[0].version})")
    for outcome in outcomes:
        value = "missing" if outcome.value is None else f"{outcome.value:.4g}"
        table.add_row(outcome.check.metric, value, outcome.threshold,
                      "[green]pass[/green]" if outcome.passed else "[red]FAIL[/red]")
    console.print(table)
    failed = [outcome.check.metric for outcome in outcomes if not outcome.passed]
    if failed:
        console.print(f"[red]gate failed[/red]: {', '.join(failed)}")
        raise typer.Exit(1)
    console.print("[green]gate passed[/green]")
    if promote:
        info = _versions(database_url, lambda versions: versions.set_status(found[0].id, "active"))
        console.print(f"{info.router} version {info.id} ({info.version}) is {info.status}")


if __name__ == "__main__":
    app()
