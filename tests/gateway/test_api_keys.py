"""API keys against real PostgreSQL (and SQLite): the CLI, the admin API, checking, budgets, tenant-scoped cache, logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.keys.store import SHOWN_CHARS, hash_key
from gateway.migrate import alembic_config, downgrade, upgrade
from migrations.schema import ApiKeyRow
from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    fresh_redis_db,
    issue_key,
    routed_config,
    running_gateway,
    wait_for,
)
from tests.gateway.tcp_proxy import tcp_proxy

REDIS_DB = 11  # shared with tests/gateway/test_rate_limit.py, emptied per test


def key_rows(database_url: str) -> list[ApiKeyRow]:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id)))
    finally:
        engine.dispose()


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)


def ask(client: openai.OpenAI, question: str = MATH_QUESTION) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="moe-auto", messages=[{"role": "user", "content": question}]
    )


def moe(*args: str, database_url: str) -> Any:
    result = CliRunner().invoke(cli, ["keys", *args], env={"DATABASE_URL": database_url})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def keyed(healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str,
          tmp_path: Path) -> Iterator[Gateway]:
    """A gateway that requires keys, its decision log and keys in PostgreSQL."""
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, postgres_url, tmp_path, moe_require_api_key=True, moe_key_cache_ttl_s=0.5) as gw:
        yield gw


# -- schema and CLI ---------------------------------------------------------------------------------
def test_migration_0004_goes_up_and_down(database_url: str) -> None:
    def columns(table: str) -> set[str]:
        engine = create_engine(database_url)
        try:
            return {c["name"] for c in inspect(engine).get_columns(table)}
        finally:
            engine.dispose()

    def tables() -> set[str]:
        engine = create_engine(database_url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    upgrade(database_url)
    assert "api_keys" in tables() and {"api_key_id", "tenant"} <= columns("decisions")
    command.check(alembic_config(database_url))  # models and migrations describe the same schema
    downgrade(database_url, "0003")
    assert "api_keys" not in tables() and not {"api_key_id", "tenant"} & columns("decisions")
    upgrade(database_url)
    assert {"key_hash", "key_prefix", "rpm_limit", "tpm_limit", "budget_usd", "spent_usd", "revoked_at"} <= columns("api_keys")


def test_cli_creates_lists_and_revokes_keys(database_url: str) -> None:
    upgrade(database_url)
    created = moe("create", "--name", "ci", "--tenant", "acme", "--rpm", "5", "--tpm", "1000", "--budget-usd", "2.5",
                  "--admin", database_url=database_url)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()  # stdout holds the key and nothing else
    assert key.startswith("sk-moe-") and len(key) > 40
    [row] = key_rows(database_url)
    assert row.key_hash == hash_key(key) and key.startswith(row.key_prefix) and len(row.key_prefix) < 15
    assert (row.name, row.tenant, row.admin, row.rpm_limit, row.tpm_limit, row.budget_usd, row.spent_usd) == (
        "ci", "acme", True, 5, 1000, 2.5, 0.0)
    assert key not in " ".join(str(v) for v in vars(row).values())  # stored hashed only

    listed = moe("list", database_url=database_url)
    assert listed.exit_code == 0 and row.key_prefix in listed.stdout and "acme" in listed.stdout
    assert key not in listed.output and row.key_hash not in listed.output

    assert moe("revoke", str(row.id), database_url=database_url).exit_code == 0
    assert key_rows(database_url)[0].revoked_at is not None
    missing = moe("revoke", "999", database_url=database_url)
    assert missing.exit_code == 1 and "no key with id 999" in missing.output
    refused = moe("create", "--name", "x", "--tenant", "t", "--rpm", "0", database_url=database_url)
    assert refused.exit_code == 2  # typer checks the bounds


def test_cli_says_when_the_database_is_not_migrated(tmp_path: Path) -> None:
    result = moe("list", database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.exit_code == 1 and "moe db upgrade" in result.output


# -- checking keys over HTTP ------------------------------------------------------------------------
def test_chat_needs_a_live_key(keyed: Gateway, postgres_url: str) -> None:
    key = issue_key(postgres_url, tenant="acme")
    body = {"model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]}
    missing = httpx.post(f"{keyed.v1}/chat/completions", json=body)
    basic = httpx.post(f"{keyed.v1}/chat/completions", json=body, headers={"authorization": "Basic dXNlcjpwYXNz"})
    for response in (missing, basic):
        assert response.status_code == 401
        assert response.json()["error"] == {"message": response.json()["error"]["message"],
                                             "type": "authentication_error", "param": None, "code": "invalid_api_key"}
    with pytest.raises(openai.AuthenticationError) as unknown:
        ask(sdk(keyed, "sk-moe-" + "x" * 43))
    assert unknown.value.code == "invalid_api_key"

    answered = ask(sdk(keyed, key.key))
    assert answered.http_response.status_code == 200
    assert [m.id for m in sdk(keyed, key.key).models.list()][0] == "moe-auto"
    assert httpx.get(f"{keyed.v1}/models").status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):  # probes and scraping stay open
        assert httpx.get(f"{keyed.base_url}{path}").status_code == 200

    # Revoked from the CLI (another process): refused once this replica's cache entry expires.
    assert moe("revoke", str(key.id), database_url=postgres_url).exit_code == 0
    wait_for(lambda: httpx.get(f"{keyed.v1}/models", headers={"authorization": f"Bearer {key.key}"}).status_code == 401,
             timeout_s=5, what="the revocation to reach the gateway")
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(keyed, key.key))
    wait_for(lambda: len(decisions(postgres_url)) == 1, what="the decision record")
    [record] = decisions(postgres_url)
    assert (record.id, record.api_key_id, record.tenant) == (answered.headers["x-moe-decision-id"], key.id, "acme")


def test_a_key_sharing_a_real_keys_visible_prefix_is_refused(keyed: Gateway, postgres_url: str) -> None:
    """Listings and logs show a key's first characters: knowing them must not be enough to get in."""
    key = issue_key(postgres_url).key
    assert ask(sdk(keyed, key)).http_response.status_code == 200
    shown = key[:SHOWN_CHARS]
    for forged in (shown + "x" * (len(key) - len(shown)), shown, key[:-1] + ("A" if key[-1] != "A" else "B")):
        with pytest.raises(openai.AuthenticationError) as refused:
            ask(sdk(keyed, forged))
        assert refused.value.code == "invalid_api_key"


def test_admin_endpoints_need_an_admin_key(keyed: Gateway, postgres_url: str) -> None:
    admin = sdk(keyed, issue_key(postgres_url, name="ops", admin=True).key)
    user = sdk(keyed, issue_key(postgres_url, name="app").key)
    for call in (lambda c: c.get("/admin/keys", cast_to=object),
                 lambda c: c.post("/admin/keys", cast_to=object, body={"name": "x", "tenant": "t"}),
                 lambda c: c.delete("/admin/keys/1", cast_to=object)):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            call(user)
        assert denied.value.code == "insufficient_permissions" and denied.value.body["type"] == "permission_error"  # type: ignore[index]
    assert httpx.get(f"{keyed.v1}/admin/keys").status_code == 401

    response = admin.post("/admin/keys", cast_to=httpx.Response,
                          body={"name": "svc", "tenant": "beta", "rpm_limit": 5, "budget_usd": 1.0})
    assert response.status_code == 201
    created = response.json()
    assert created["key"].startswith(created["key_prefix"]) and created["tenant"] == "beta"
    assert ask(sdk(keyed, created["key"])).http_response.status_code == 200

    listing = admin.get("/admin/keys", cast_to=httpx.Response)
    assert [k["name"] for k in listing.json()["data"]] == ["ops", "app", "svc"]
    assert created["key"] not in listing.text and hash_key(created["key"]) not in listing.text
    assert all("key" not in k and "key_hash" not in k for k in listing.json()["data"])

    revoked = admin.delete(f"/admin/keys/{created['id']}", cast_to=object)
    assert revoked["id"] == created["id"] and revoked["revoked_at"]  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):  # at once: the replica that revoked it forgets it
        ask(sdk(keyed, created["key"]))
    with pytest.raises(openai.NotFoundError) as missing:
        admin.delete("/admin/keys/9999", cast_to=object)
    assert missing.value.code == "key_not_found"
    with pytest.raises(openai.BadRequestError) as invalid:
        admin.post("/admin/keys", cast_to=object, body={"name": "", "tenant": "t"})
    assert invalid.value.body["param"] == "name"  # type: ignore[index]


def test_quickstart_needs_no_key_but_managing_keys_does(healthy_experts: list[dict[str, Any]], router_artifact: Path,
                                                         sqlite_url: str, tmp_path: Path) -> None:
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path) as gw:
        answered = ask(sdk(gw, "unused"))
        assert httpx.get(f"{gw.v1}/admin/keys").status_code == 401
        with pytest.raises(openai.PermissionDeniedError):
            sdk(gw, issue_key(sqlite_url).key).get("/admin/keys", cast_to=object)
        listing = sdk(gw, issue_key(sqlite_url, admin=True).key).get("/admin/keys", cast_to=object)
    assert answered.http_response.status_code == 200
    assert len(listing["data"]) == 2  # type: ignore[index]
    [record] = decisions(sqlite_url)
    assert record.api_key_id is None and record.tenant is None


def test_keys_already_seen_keep_working_while_the_database_is_down(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    real = make_url(postgres_url)
    with tcp_proxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        config = routed_config(healthy_experts, router_artifact)
        with running_gateway(config, url, tmp_path, moe_require_api_key=True, moe_key_cache_ttl_s=0.2) as gw:
            seen, unseen = issue_key(postgres_url).key, issue_key(postgres_url, name="unseen").key
            ask(sdk(gw, seen))
            proxy.down()
            time.sleep(0.3)  # the cached entry is stale: the lookup fails, the last known state answers
            during = [ask(sdk(gw, seen)).http_response.status_code for _ in range(2)]
            with pytest.raises(openai.InternalServerError) as unavailable:
                ask(sdk(gw, unseen))
            proxy.up()
            # The spend of the requests served during the outage reaches the database once it is back.
            wait_for(lambda: len(decisions(postgres_url)) == 3, timeout_s=30, what="the records")
            cost = sum(r.cost_usd or 0.0 for r in decisions(postgres_url))
            wait_for(lambda: key_rows(postgres_url)[0].spent_usd == pytest.approx(cost), timeout_s=10,
                     what="the spend")
    assert during == [200, 200]
    assert unavailable.value.status_code == 503 and unavailable.value.code == "key_store_unavailable"


# -- budgets, tenants, logs -------------------------------------------------------------------------
def test_a_key_over_its_budget_gets_insufficient_quota(keyed: Gateway, postgres_url: str) -> None:
    capped = issue_key(postgres_url, budget_usd=1e-6)  # one echo answer costs ~5e-6 USD
    free = issue_key(postgres_url)
    first = ask(sdk(keyed, capped.key))
    with pytest.raises(openai.RateLimitError) as refused:
        ask(sdk(keyed, capped.key))
    assert refused.value.code == "insufficient_quota" and refused.value.response.headers["x-should-retry"] == "false"
    assert ask(sdk(keyed, free.key)).http_response.status_code == 200

    wait_for(lambda: len(decisions(postgres_url)) == 2, what="the decision records")
    costs = {r.api_key_id: r.cost_usd for r in decisions(postgres_url)}
    assert costs[capped.id] > 1e-6
    # Spend reaches the database in the background, not while the client waits.
    wait_for(lambda: {r.id: r.spent_usd for r in key_rows(postgres_url)} == pytest.approx(costs), timeout_s=5,
             what="the spend written to api_keys")
    assert first.http_response.status_code == 200


def test_tenants_never_share_cached_answers(healthy_experts: list[dict[str, Any]], router_artifact: Path,
                                            postgres_url: str, tmp_path: Path) -> None:
    config = routed_config(healthy_experts, router_artifact)
    with fresh_redis_db(REDIS_DB) as redis_url, running_gateway(
        config, postgres_url, tmp_path, moe_require_api_key=True, redis_url=redis_url
    ) as gw:
        acme, acme_too, globex = (issue_key(postgres_url, tenant=t).key for t in ("acme", "acme", "globex"))
        seen = [(who, ask(sdk(gw, key), HISTORY_QUESTION).headers["x-moe-cache"])
                for who, key in [("acme", acme), ("acme", acme_too), ("globex", globex), ("globex", globex)]]
    assert seen == [("acme", "miss"), ("acme", "hit"), ("globex", "miss"), ("globex", "hit")]


def test_keys_never_reach_the_logs(keyed: Gateway, postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    created = moe("create", "--name", "ci", "--tenant", "acme", "--rpm", "1", "--admin", database_url=postgres_url)
    key = created.stdout.strip()
    client = sdk(keyed, key)
    ask(client)
    with pytest.raises(openai.RateLimitError):
        ask(client)
    other = client.post("/admin/keys", cast_to=object, body={"name": "svc", "tenant": "beta"})
    client.delete(f"/admin/keys/{other['id']}", cast_to=object)  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(keyed, other["key"]))  # type: ignore[index]
    prefix = key_rows(postgres_url)[0].key_prefix
    assert f"{prefix}..." in caplog.text  # the logs were captured and name keys by prefix...
    for secret in (key, hash_key(key), other["key"], hash_key(other["key"])):  # type: ignore[index]
        assert secret not in caplog.text  # ...and never by the key (or its hash)
    # Nor is prompt text logged at INFO and above (litellm's own DEBUG output does show it).
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and MATH_QUESTION in r.getMessage()]
