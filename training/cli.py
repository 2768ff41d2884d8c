"""`moe router ...`: train routers on the MMLU-Pro pool (mounted in the main CLI; runnable alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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
    config: Annotated[Path | None, typer.Option(help="YAML whose `experts:` the router routes between")] = None,
) -> None:
    """Train on the pool's train split, evaluate on dev, save router.json and the model files."""
    from training.train import DEFAULT_CONFIG, train_router

    directory = out or Path("var/routers") / family
    console.print(f"training [bold]{family}[/] -> {directory}")
    result = train_router(family, directory, config=config or DEFAULT_CONFIG, pool_dir=pool_dir, limit=limit)
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


if __name__ == "__main__":
    app()
