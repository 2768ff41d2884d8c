"""Router versions in the database (PostgreSQL and SQLite): registered, promoted, reverted with `moe router`, and
served by every gateway replica within a poll, without a restart and without a failed request."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.migrate import upgrade
from migrations.router_versions import RouterVersions, VersionError, pack, unpack
from tests.gateway.support import MATH_QUESTION, decisions, retagged, routed_config, running_gateway, wait_for


def moe_router(*args: str, database_url: str) -> Any:
    result = CliRunner().invoke(cli, ["router", *args], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    return result


def test_versions_register_promote_and_revert(router_artifact: Path, database_url: str, tmp_path: Path) -> None:
    upgrade(database_url)
    versions = RouterVersions(create_engine(database_url))
    a = versions.register("embedding", router_artifact, status="active")
    assert versions.register("embedding", router_artifact).id == a.id  # the same files again: nothing new
    with pytest.raises(VersionError, match="registered with other files"):
        changed = retagged(router_artifact, tmp_path / "changed", a.version)
        (changed / "extra.txt").write_text("not the same artifact")
        versions.register("embedding", changed)
    b = versions.register("embedding", retagged(router_artifact, tmp_path / "b", "v-b"))
    assert (versions.serving("embedding")["active"].id, b.status) == (a.id, "candidate")

    moe_router("promote", str(b.id), database_url=database_url)
    assert [(v.id, v.status) for v in versions.list("embedding")] == [(a.id, "retired"), (b.id, "active")]
    moe_router("revert", "embedding", database_url=database_url)
    assert [(v.id, v.status) for v in versions.list("embedding")] == [(a.id, "active"), (b.id, "retired")]
    assert "v-b" in moe_router("versions", database_url=database_url).output
    with pytest.raises(VersionError, match="no active version"):
        versions.revert("other-router")

    fetched = versions.artifact(b.id, tmp_path / "fetched")
    assert json.loads((fetched / "router.json").read_text())["version"] == "v-b"
    assert sorted(p.name for p in fetched.iterdir()) == sorted(p.name for p in router_artifact.iterdir())


def test_an_artifact_packs_the_same_every_time_and_unpacks_whole(router_artifact: Path, tmp_path: Path) -> None:
    blob = pack(router_artifact)
    assert pack(router_artifact) == blob  # no timestamps or owners: the hash names the files
    unpack(blob, tmp_path / "out")
    for path in router_artifact.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


def test_replicas_in_one_process_each_get_the_version_whole(router_artifact: Path, sqlite_url: str, tmp_path: Path) -> None:
    """Several calls unpacking one version into one directory at once (replicas, or workers, sharing it): each call
    reads back the files exactly as registered the moment it returns, and no staging folder is left behind."""
    upgrade(sqlite_url)
    source = tmp_path / "source"
    shutil.copytree(router_artifact, source)
    (source / "weights.bin").write_bytes(os.urandom(16 * 2**20))  # a slow unpack: a wide window for the race
    expected = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in source.iterdir()}
    versions = RouterVersions(create_engine(sqlite_url))
    version = versions.register("embedding", source)

    def unpack_and_read(directory: Path) -> dict[str, str]:
        got = versions.artifact(version.id, directory)
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in got.iterdir()}

    for attempt in range(4):
        directory = tmp_path / "versions" / str(attempt)
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(unpack_and_read, [directory] * 4)) == [expected] * 4
    assert sorted(path.name for path in (tmp_path / "versions").iterdir()) == ["0", "1", "2", "3"]


def test_a_version_that_fails_to_load_is_said_and_skipped_and_the_next_one_served(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upgrade(sqlite_url)
    versions = RouterVersions(create_engine(sqlite_url))
    first = versions.register("embedding", router_artifact, status="active")
    damaged = retagged(router_artifact, tmp_path / "damaged", "v-damaged")
    for table in damaged.glob("*.npz"):  # cut short: numpy's reader fails with neither an OSError nor a ValueError
        table.write_bytes(table.read_bytes()[:200])
    broken = versions.register("embedding", damaged)
    fixed = versions.register("embedding", retagged(router_artifact, tmp_path / "fixed", "v-fixed"))
    settings = {"moe_router_poll_s": 0.2, "moe_router_versions_dir": tmp_path / "versions"}
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path, **settings) as gw:

        def served() -> str:
            response = httpx.post(f"{gw.v1}/chat/completions", timeout=30, json={
                "model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]})
            assert response.status_code == 200, response.text
            return response.headers["x-moe-router"]

        assert served().endswith(f"@{first.version}")
        moe_router("promote", str(broken.id), database_url=sqlite_url)
        wait_for(lambda: "versions not read or loaded" in caplog.text, what="the failed load said")
        assert served().endswith(f"@{first.version}")  # the last version that loaded serves on
        moe_router("promote", str(fixed.id), database_url=sqlite_url)
        wait_for(lambda: served().endswith("@v-fixed"), timeout_s=60, what="the next version served")


def test_every_replica_serves_a_promoted_version_without_a_failed_request(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    versions = RouterVersions(create_engine(postgres_url))
    first = versions.register("embedding", router_artifact, status="active")
    second = versions.register("embedding", retagged(router_artifact, tmp_path / "second", "v-second"))
    config = routed_config(healthy_experts, router_artifact)
    settings = {"moe_router_poll_s": 0.2, "moe_router_versions_dir": tmp_path / "versions"}
    with running_gateway(config, postgres_url, tmp_path / "a", **settings) as one, \
            running_gateway(config, postgres_url, tmp_path / "b", **settings) as two:
        failures: list[str] = []
        served: list[tuple[str, str]] = []  # (replica, router header) in order
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    for name, gw in (("one", one), ("two", two)):
                        response = client.post(f"{gw.v1}/chat/completions", json={
                            "model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]})
                        if response.status_code != 200:
                            failures.append(response.text)
                        served.append((name, response.headers.get("x-moe-router", "")))

        def serves(version: str) -> bool:
            latest = {name: header for name, header in served}
            return all(header.endswith(f"@{version}") for header in latest.values()) and len(latest) == 2

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            wait_for(lambda: serves(first.version), what="both replicas serving the active version")
            # Within a poll or two (0.2 s each) on a quiet machine; the bound only keeps a broken reload from hanging.
            moe_router("promote", str(second.id), database_url=postgres_url)
            wait_for(lambda: serves("v-second"), timeout_s=60, what="both replicas serving the promoted version")
            moe_router("revert", "embedding", database_url=postgres_url)
            wait_for(lambda: serves(first.version), timeout_s=60, what="both replicas serving the version reverted to")
        finally:
            stop.set()
            worker.join()
    assert failures == []
    assert {header for _, header in served} == {f"embedding-domain@{first.version}", "embedding-domain@v-second"}


def test_a_shadow_version_decides_beside_the_served_one_and_is_never_served(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    upgrade(sqlite_url)
    versions = RouterVersions(create_engine(sqlite_url))
    served = versions.register("embedding", router_artifact, status="active")
    shadow = versions.register("embedding", retagged(router_artifact, tmp_path / "shadow", "v-shadow"), status="shadow")
    settings = {"moe_router_poll_s": 0.2, "moe_router_versions_dir": tmp_path / "versions", "moe_shadow_share": 1.0}
    body = {"model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]}
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path, **settings) as gw:
        headers = [httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=30).headers for _ in range(4)]
        metrics = httpx.get(f"{gw.base_url}/metrics").text
        versions.set_status(shadow.id, "retired")
        wait_for(lambda: httpx.get(f"{gw.base_url}/readyz").json()["router_versions"]["embedding"]
                 == {"active": served.id, "shadow": None, "ab": None}, what="the retired shadow dropped")
        after = httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=30)
        wait_for(lambda: len(decisions(sqlite_url)) == 5, what="every decision written")
    assert {h["x-moe-router"] for h in headers} == {f"embedding-domain@{served.version}"}  # never served
    *shadowed, last = decisions(sqlite_url)
    for record in shadowed:  # the same weights under another version: the same pick, no predicted difference
        assert (record.shadow_version, record.shadow_expert, record.shadow_agrees, record.shadow_delta) == (
            "embedding-domain@v-shadow", record.chosen_expert, True, 0.0)
    assert last.id == after.headers["x-moe-decision-id"] and last.shadow_version is None
    assert ('llm_router_shadow_decisions_total{agreement="agree",router="embedding-domain",'
            'shadow="embedding-domain@v-shadow"} 4.0') in metrics


def test_an_ab_candidate_serves_its_share_of_users_each_always_by_the_same_version(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    upgrade(sqlite_url)
    versions = RouterVersions(create_engine(sqlite_url))
    active = versions.register("embedding", router_artifact, status="active")
    candidate = versions.register("embedding", retagged(router_artifact, tmp_path / "candidate", "v-candidate"))
    with pytest.raises(VersionError, match="only a candidate"):
        versions.set_share(active.id, 0.5)
    moe_router("ab", str(candidate.id), "--share", "0.5", database_url=sqlite_url)
    settings = {"moe_router_poll_s": 0.2, "moe_router_versions_dir": tmp_path / "versions"}

    def router_of(gw: Any, user: str | None) -> str:
        body = {"model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]}
        response = httpx.post(f"{gw.v1}/chat/completions", json={**body, **({"user": user} if user else {})}, timeout=30)
        assert response.status_code == 200, response.text
        return response.headers["x-moe-router"].split("@")[1]

    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path, **settings) as gw:
        users = [f"user-{i}" for i in range(40)]
        first = {user: router_of(gw, user) for user in users}
        again = {user: router_of(gw, user) for user in users}
        anonymous = {router_of(gw, None) for _ in range(5)}
        metrics = httpx.get(f"{gw.base_url}/metrics").text
        moe_router("ab", str(candidate.id), "--share", "0", database_url=sqlite_url)  # the test ends
        wait_for(lambda: httpx.get(f"{gw.base_url}/readyz").json()["router_versions"]["embedding"]["ab"] is None,
                 what="the A/B candidate dropped")
        after = {router_of(gw, user) for user in users}
    assert first == again  # sticky: a user keeps the version it was assigned
    assert 8 <= sum(v == "v-candidate" for v in first.values()) <= 32  # half of 40 users, give or take
    assert set(first.values()) == {active.version, "v-candidate"}
    assert anonymous == after == {active.version}  # no key and no user: not in the test; once it ends, nobody is
    served = sum(v == "v-candidate" for v in first.values()) * 2
    assert (f'llm_router_version_requests_total{{router="embedding-domain",status="ok",version="v-candidate"}} '
            f'{float(served)}') in metrics
