"""`moe router ...`: train routers on the MMLU-Pro pool (mounted in the main CLI; runnable alone)."""

from __future__ import annotations

from collections.abc import Callable
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
        str, typer.Option(help="what the router reads of a query: " + ", ".join(KINDS))
    ] = DEFAULT_KIND,
    config: Annotated[Path | None, typer.Option(help="YAML whose `experts:` the router routes between")] = None,
) -> None:
    """Train on a dataset's train split, evaluate on dev, save router.json and the model files."""
    import importlib.util

    from training.train import DEFAULT_CONFIG, train_router

    if importlib.util.find_spec("sklearn") is None:
        console.print("[red]training needs the train extra[/red]: pip install 'moe-gateway[train]' (make setup has it)")
        raise typer.Exit(1)

    if features not in KINDS:
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
    table.add_row("seconds", f"{result.seconds:.1f}")
    console.print(table)


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

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from training.dataset import load_dataset
    from training.evaluate import plot, run_scenario, summary_table

    dataset = load_dataset(data)
    if experts:
        dataset = dataset.with_experts([name.strip() for name in experts.split(",") if name.strip()])
    names = [name.strip() for name in baselines.split(",") if name.strip()]
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:

        def on_start(description: str, total: int):  # noqa: ANN202
            task = progress.add_task(description, total=total)
            return lambda done: progress.advance(task, done)

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


if __name__ == "__main__":
    app()
