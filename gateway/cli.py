"""`moe`: serve the gateway, run migrations, train routers, start local experts, or all of it at once."""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from gateway.config import ConfigError, load_config
from gateway.settings import Settings
from training.cli import app as router_app
from training.judge import judge_command

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gateway.keys.store import KeyStore

app = typer.Typer(help="Model-routing OpenAI-compatible gateway.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Decision-log database migrations.", no_args_is_help=True)
experts_app = typer.Typer(help="Local vLLM expert servers.", no_args_is_help=True)
batch_app = typer.Typer(help="Offline batches of chat requests (OpenAI Batch API files).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(experts_app, name="experts")
keys_app = typer.Typer(help="API keys, stored hashed in the DATABASE_URL database.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(batch_app, name="batch")
app.add_typer(router_app, name="router")
app.command("judge")(judge_command)
console = Console(stderr=True)


def _config_or_exit(settings: Settings):  # noqa: ANN202 - GatewayConfig, imported lazily by callers
    try:
        return load_config(settings.moe_config)
    except ConfigError as exc:
        console.print(f"[red]invalid config[/red]: {exc}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="worker processes, each with its own routers, in-flight bound "
                                                    "and /metrics")] = 1,
) -> None:
    """Run the gateway (config from MOE_CONFIG, decision log at DATABASE_URL)."""
    # No garbage collection while starting: imports and start-up allocate objects that live as long as the
    # process, and scanning them took a tenth of a start's CPU. The app's lifespan freezes what start-up built
    # and turns collection back on (gateway/app.py).
    gc.disable()
    import uvicorn

    from gateway.observability.logs import logging_config
    from gateway.services import StartupError, check_artifacts

    settings = Settings()
    # A bad config or a missing router stops here, in one clear line, not as a traceback in every worker (and
    # with several workers uvicorn's supervisor would exit 0 after one failed to start).
    try:
        check_artifacts(_config_or_exit(settings))
    except StartupError as exc:
        console.print(f"[red]cannot start[/red]: {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    # An app factory's import string: uvicorn's workers are processes, each building its own app (one
    # worker takes the same path). On SIGTERM uvicorn stops accepting, lets in-flight requests (streams
    # too) finish for up to MOE_DRAIN_S, cancels the rest, then runs the lifespan's shutdown, which
    # flushes the decision log. Its access log stays off: the gateway logs one line per chat request
    # from the decision record.
    # ws="none": no WebSocket endpoint, so uvicorn need not import a websockets library at start.
    uvicorn.run("gateway.cli:serve_app", factory=True, host=host, port=port, workers=workers, access_log=False,
                ws="none", log_level="info", log_config=logging_config(settings.moe_log_format),
                timeout_graceful_shutdown=settings.moe_drain_s)


def serve_app() -> FastAPI:
    """`moe serve`'s app, built by uvicorn in each worker process from the environment (MOE_CONFIG...)."""
    from gateway.app import create_app
    from gateway.observability.logs import THIRD_PARTY_WARNING_ONLY
    from routers import one_blas_thread

    one_blas_thread()  # for the life of the worker: it routes one request's query at a time
    # uvicorn configured logging before importing the app, and with it litellm, which attaches its own
    # stderr handlers at import: drop them again, so that its lines go through ours as well.
    for name in THIRD_PARTY_WARNING_ONLY:
        logging.getLogger(name).handlers.clear()
    return create_app()


@app.command("check-config")
def check_config(path: Annotated[Path | None, typer.Argument(help="config file (default: MOE_CONFIG)")] = None) -> None:
    """Validate a config file and print what it declares."""
    settings = Settings() if path is None else Settings(moe_config=path)
    config = _config_or_exit(settings)
    console.print(
        f"[green]ok[/green]: {len(config.experts)} experts, {len(config.servers)} servers, "
        f"{len(config.routers)} routers, virtual models: {', '.join(v.name for v in config.virtual_models) or '-'}"
    )


@experts_app.command("up")
def experts_up() -> None:
    """Start the vLLM servers listed under `servers:` and keep them running until Ctrl-C."""
    from experts.launcher import running_servers, wait_any_exit

    config = _config_or_exit(Settings())
    with running_servers(config, console=console) as servers:
        for server in servers:
            console.print(f"[green]serving[/green] {server.name}: {', '.join(config.served_names(server.server))} "
                          f"at {server.api_base}")
        if not servers:
            return
        try:
            dead = wait_any_exit(servers)
        except KeyboardInterrupt:
            console.print("stopping")
            return
    console.print(f"[red]server {dead.name} exited[/red] (code {dead.process.returncode}); log: {dead.log_path}")
    raise typer.Exit(1)


DEMO_QUESTION = "What is the derivative of x^3 + 2x with respect to x?"


@app.command()
def up(
    port: Annotated[int, typer.Option(help="gateway port")] = 8000,
    once: Annotated[bool, typer.Option(help="exit after the demo answer instead of serving")] = False,
    question: Annotated[str, typer.Option(help="the routed question asked once the gateway is up")] = DEMO_QUESTION,
) -> None:
    """Migrate, train the router if missing, start the experts and the gateway, ask one routed question."""
    import threading

    import uvicorn

    from experts.launcher import running_servers
    from gateway.app import create_app
    from gateway.migrate import upgrade

    settings = Settings()
    config = _config_or_exit(settings)
    upgrade(settings.database_url)
    for router in config.routers:
        if not (router.artifact / "router.json").is_file():
            from training.train import train_router

            console.print(f"[bold]training router {router.name}[/bold] ({router.family}) into {router.artifact} "
                          "(first run only)")
            train_router(router.family, router.artifact, config=settings.moe_config)
    with running_servers(config, console=console):  # a config without servers starts none
        server = uvicorn.Server(uvicorn.Config(create_app(settings, config), host="127.0.0.1", port=port,
                                               access_log=False, log_level="warning"))
        outcome: dict[str, BaseException] = {}

        def demo() -> None:
            try:
                while not server.started:
                    time.sleep(0.1)
                _ask(f"http://127.0.0.1:{port}/v1", config.virtual_models[0].name, question)
                console.print(f"[green]gateway ready[/green] at http://127.0.0.1:{port}/v1 "
                              + ("" if once else "(Ctrl-C stops it and the experts)"))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                outcome["error"] = exc
            finally:
                if once or "error" in outcome:
                    server.should_exit = True

        threading.Thread(target=demo, daemon=True).start()
        server.run()
    if "error" in outcome:
        console.print(f"[red]the demo request failed[/red]: {outcome['error']}")
        raise typer.Exit(1)


def _ask(base_url: str, model: str, question: str) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=96, temperature=0
    )
    answer = raw.parse().choices[0].message.content
    console.print(f"[bold]Q:[/bold] {question}")
    console.print(f"[bold]routed to[/bold] {raw.headers['x-moe-expert']} by {raw.headers.get('x-moe-router')} "
                  f"(decision {raw.headers['x-moe-decision-id']})")
    console.print(f"[bold]A:[/bold] {answer}")


@batch_app.command("run")
def batch_run(
    source: Annotated[Path, typer.Argument(help="JSONL: OpenAI Batch API lines or bare chat bodies", exists=True,
                                           dir_okay=False)],
    out: Annotated[Path, typer.Argument(help="JSONL of OpenAI Batch output lines, in input order")],
    config: Annotated[Path | None, typer.Option(help="config file (default: MOE_CONFIG)")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight per expert (also capped by its "
                                                        "max_concurrency)")] = 8,
) -> None:
    """Route every request, then send each expert its requests together. Rerun after a kill to resume."""
    import asyncio

    from gateway.batch.runner import BatchError, run_batch

    settings = Settings() if config is None else Settings(moe_config=config)
    gateway_config = _config_or_exit(settings)
    try:
        summary = asyncio.run(run_batch(settings, gateway_config, source, out, concurrency=concurrency, console=console))
    except BatchError as exc:
        console.print(f"[red]cannot run the batch[/red]: {exc}")
        raise typer.Exit(2) from None
    console.print(f"[green]done[/green]: {summary}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations to DATABASE_URL."""
    from gateway.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url, revision)
    console.print(f"[green]database at {revision}[/green]: {_redact(settings.database_url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Revert migrations on DATABASE_URL down to REVISION ('base' removes everything)."""
    from gateway.migrate import downgrade

    settings = Settings()
    downgrade(settings.database_url, revision)
    console.print(f"[yellow]database at {revision}[/yellow]: {_redact(settings.database_url)}")


@db_app.command("prune")
def db_prune(
    older_than: Annotated[str | None, typer.Option(help="remove decisions older than this: 30d, 12h or 90m")] = None,
) -> None:
    """Apply retention: remove decisions (with their expert calls and feedback) and dead letters older than AGE, clear
    the text of decisions older than their virtual model's `store_text.retention_days` (MOE_CONFIG), and remove stored
    responses older than MOE_RESPONSES_RETENTION_DAYS (on every run)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.exc import SQLAlchemyError

    from gateway.decisions.log import make_engine
    from migrations.retention import clear_text, parse_age, prune, prune_responses

    try:
        age = parse_age(older_than) if older_than is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    settings = Settings()
    now = datetime.now(UTC)
    retention = {vm.name: now - timedelta(days=vm.store_text.retention_days)
                 for vm in _config_or_exit(settings).virtual_models
                 if vm.store_text is not None and vm.store_text.retention_days is not None}
    engine = make_engine(settings.database_url)
    try:
        pruned = prune(engine, now - age) if age is not None else None
        cleared = clear_text(engine, retention)
        responses = prune_responses(engine, now - timedelta(days=settings.moe_responses_retention_days))
    except SQLAlchemyError as exc:
        console.print(f"[red]database error[/red] on {_redact(settings.database_url)} "
                      f"(is it migrated? `moe db upgrade`): {type(exc).__name__}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    if pruned is not None:
        console.print(f"removed {pruned.decisions} decisions, {pruned.expert_calls} expert calls, {pruned.feedback} "
                      f"feedback and {pruned.dead_letters} dead letters older than {older_than}")
    if retention:
        console.print(f"cleared the text of {cleared} decisions past their virtual model's retention "
                      f"({', '.join(sorted(retention))})")
    console.print(f"removed {responses} stored responses older than {settings.moe_responses_retention_days} days "
                  "(MOE_RESPONSES_RETENTION_DAYS)")


@contextmanager
def _key_store() -> Iterator[KeyStore]:
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.decisions.log import make_engine
    from gateway.keys.store import KeyStore

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        yield KeyStore(engine)
    except SQLAlchemyError as exc:
        console.print(f"[red]database error[/red] on {_redact(settings.database_url)} "
                      f"(is it migrated? `moe db upgrade`): {type(exc).__name__}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="what the key is for")],
    tenant: Annotated[str, typer.Option(help="who it belongs to; tenants never share cached answers")],
    rpm: Annotated[int | None, typer.Option(min=1, help="requests per minute (default: unlimited)")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="tokens per minute (default: unlimited)")] = None,
    budget_usd: Annotated[float | None, typer.Option(min=0, help="spend limit in USD (default: unlimited)")] = None,
    admin: Annotated[bool, typer.Option(help="may manage keys through /v1/admin/keys")] = False,
) -> None:
    """Create a key and print it: it is shown this once (stdout has only the key, for scripts)."""
    from gateway.keys.store import NewKey

    new = NewKey(name=name, tenant=tenant, rpm_limit=rpm, tpm_limit=tpm, budget_usd=budget_usd, admin=admin)
    with _key_store() as store:
        created = store.create(new)
    typer.echo(created.key)
    console.print(f"[green]created key {created.id}[/green] ({created.key_prefix}...) for tenant {created.tenant}; "
                  "store it now, it cannot be shown again")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (their prefixes, never the keys)."""
    from rich.table import Table

    with _key_store() as store:
        keys = store.list()
    table = Table("id", "name", "tenant", "prefix", "admin", "rpm", "tpm", "budget USD", "spent USD", "created", "revoked")
    for k in keys:
        table.add_row(str(k.id), k.name, k.tenant, f"{k.key_prefix}...", "yes" if k.admin else "",
                      _or_dash(k.rpm_limit), _or_dash(k.tpm_limit), _or_dash(k.budget_usd), f"{k.spent_usd:.6f}",
                      f"{k.created_at:%Y-%m-%d %H:%M}", f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    Console(width=200).print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(metavar="ID", help="the key's id (see `moe keys list`)")]) -> None:
    """Revoke a key: gateways refuse it within MOE_KEY_CACHE_TTL_S."""
    with _key_store() as store:
        key = store.revoke(key_id)
    if key is None:
        console.print(f"[red]no key with id {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"[yellow]revoked key {key.id}[/yellow] ({key.key_prefix}...)")


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(app())
