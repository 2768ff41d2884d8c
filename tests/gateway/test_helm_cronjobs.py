"""The chart's CronJobs: retraining the router from the log (then gating and promoting), and pruning the database."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.migrate import upgrade
from migrations.retention import parse_age
from migrations.schema import ResponseRow
from tests.gateway.chart import CHART, find, notes, one, overlay, pod_spec, render


def test_retraining_cronjob_only_when_enabled() -> None:
    assert not find(render({}), "CronJob", "retrain")
    assert not find(render(overlay(CHART / "ci" / "sqlite.yaml")), "CronJob", "retrain")


def test_retraining_cronjob_retrains_from_the_log_then_gates_and_promotes() -> None:
    values = overlay(CHART / "ci" / "external-services.yaml")
    docs = render(values)
    spec = pod_spec(one(docs, "CronJob", "retrain"))
    container = spec["containers"][0]
    shell, flag, script, name = container["command"]
    assert (shell, flag, name) == ("/bin/sh", "-c", "retrain")
    assert subprocess.run([shell, "-n", "-c", script], capture_output=True).returncode == 0  # it parses
    assert "set -eu" in script.splitlines()  # a failed retrain or gate fails the Job
    assert "moe router retrain --router" in script
    assert re.search(r"moe router gate .*--profile \"\$RETRAIN_GATE\" --promote$", script.strip())
    # The script's "$@": retrain's options from values, then the extra args.
    assert container["args"] == ["--config", "/etc/moe/config.yaml", "--family", "reward-distilled",
                                 "--base-data", "/data/mmlu_pro_pool", "--base-share", "0.3",
                                 "--feedback-source", "user"]
    env = {e["name"]: e.get("value") or e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert env["DATABASE_URL"] == "postgres-url" and env["RETRAIN_ROUTER"] == "embedding"
    assert env["RETRAIN_WINDOW_DAYS"] == "14"
    # Versions are in the database: no routers PVC; the gate profile comes from its own ConfigMap.
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "routers" not in volumes
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    gate_map = next(d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == volumes["gate"]["configMap"]["name"])
    assert Path(env["RETRAIN_GATE"]).parent == Path(mounts["gate"])
    assert json.loads(gate_map["data"][Path(env["RETRAIN_GATE"]).name]) == values["retrain"]["gate"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "moe-training-data"
    assert container["image"] == "localhost/moe-gateway-train:" + overlay(CHART / "Chart.yaml")["appVersion"]


def test_default_gate_is_the_example_profile_and_loads(tmp_path: Path) -> None:
    from training.gate import load_profile

    default = CHART.parents[1] / "training" / "gates" / "default.json"
    docs = render({"retrain": {"enabled": True}})
    gate_json = one(docs, "ConfigMap", "retrain")["data"]["gate.json"]
    assert json.loads(gate_json) == json.loads(default.read_text())
    (tmp_path / "gate.json").write_text(gate_json)
    assert load_profile(tmp_path / "gate.json") == load_profile(default)
    spec = pod_spec(one(docs, "CronJob", "retrain"))
    container = spec["containers"][0]
    assert {e["name"]: e.get("value") for e in container["env"]}["RETRAIN_ROUTER"] == "embedding"  # the first router
    assert "--base-data" not in container["args"] and "data" not in {v["name"] for v in spec["volumes"]}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: each variable's value, or where it comes from."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_retention_cronjob_prunes_with_the_gateways_image_config_and_database() -> None:
    docs = render({"imagePullSecrets": [{"name": "registry"}]})
    cronjob = one(docs, "CronJob", "retention")
    assert cronjob["spec"]["schedule"] == "30 2 * * *" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    spec, gateway = pod_spec(cronjob), pod_spec(one(docs, "Deployment", "gateway"))
    container, serving = spec["containers"][0], gateway["containers"][0]
    assert (container["image"], container["command"]) == (serving["image"], ["moe"])
    assert container["args"] == ["db", "prune"]  # no olderThan: every decision is kept
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    env, serving_env = _env(container), _env(serving)
    assert env["DATABASE_URL"] == serving_env["DATABASE_URL"] == {
        "secretKeyRef": {"name": "moe-gateway", "key": "DATABASE_URL"}
    }
    assert env["MOE_RESPONSES_RETENTION_DAYS"] == "30"
    # The gateway's own config: its ConfigMap, mounted where MOE_CONFIG points, as in the gateway pod.
    config = Path(env["MOE_CONFIG"])
    assert env["MOE_CONFIG"] == serving_env["MOE_CONFIG"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume == next(v for v in gateway["volumes"] if v["name"] == "config") and mount["readOnly"] is True
    config_map = next(d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"])
    assert config.name in config_map["data"]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def test_retention_cronjobs_command_prunes_as_the_values_say(sqlite_url: str, tmp_path: Path) -> None:
    values = {
        "retention": {"olderThan": "90d", "responsesDays": 7},
        "routing": {"virtualModels": [{"name": "kept", "router": "embedding", "store_text": {"retention_days": 1}}]},
    }
    docs = render(values)
    container = pod_spec(one(docs, "CronJob", "retention"))["containers"][0]
    assert container["args"] == ["db", "prune", "--older-than", "90d"]
    # Those arguments, run with the CronJob's environment on the rendered config and a database of our own.
    config = tmp_path / "config.yaml"
    config.write_text(next(d for d in find(docs, "ConfigMap") if "config.yaml" in d["data"])["data"]["config.yaml"])
    env = {name: value for name, value in _env(container).items() if isinstance(value, str)}
    env |= {"MOE_CONFIG": str(config), "DATABASE_URL": sqlite_url}
    upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.add_all([ResponseRow(id=f"resp_{days}", created_at=now - timedelta(days=days), api_key_id=None,
                                     tenant=None, messages="[]", response="{}") for days in (8, 6)])
    result = CliRunner().invoke(cli, container["args"], env=env)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    assert "dead letters older than 90d" in output
    assert "past their virtual model's retention (kept)" in output  # store_text from the gateway's config
    assert "removed 1 stored responses older than 7 days" in output
    with Session(engine) as session:
        assert list(session.scalars(select(ResponseRow.id))) == ["resp_6"]
    engine.dispose()


def test_retention_cronjob_only_when_enabled_and_never_beside_sqlite() -> None:
    assert not find(render({"retention": {"enabled": False}}), "CronJob", "retention")
    # The SQLite file is in the gateway pod: no Job could open it, so the notes say where to prune instead.
    sqlite = overlay(CHART / "ci" / "sqlite.yaml")
    assert not find(render(sqlite), "CronJob", "retention")
    assert "exec deploy/moe-moe-gateway -- moe db prune" in notes(sqlite)
    assert "component=retention" in notes({}) and "component=retention" not in notes(sqlite)


def test_retention_age_the_schema_accepts_is_one_prune_parses() -> None:
    pattern = json.loads((CHART / "values.schema.json").read_text())["properties"]["retention"]["properties"]
    pattern = pattern["olderThan"]["pattern"]
    for age in ("90d", "12h", "90m", "1d", "0d", "0h", "30", "d", "30s", "1.5d", "-1d", "90 d", "3w"):
        if re.search(pattern, age):
            assert parse_age(age) > timedelta(0), age
    assert all(re.search(pattern, age) for age in ("", "90d", "12h", "90m"))
