"""Gate profiles: every check against a version's metrics, a missing metric failing, `moe router gate`'s exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from migrations.router_versions import RouterVersions
from migrations.schema import Base
from routers.manifest import Manifest
from training.cli import app
from training.gate import GateProfile, load_profile, run_gate

PROFILE = {
    "description": "test",
    "checks": [
        {"metric": "offpolicy_gain_dr", "min": 0.0},
        {"metric": "routing_p95_ms", "max": 5.0},
        {"metric": "expert_share_max", "min": 0.2, "max": 0.9},
    ],
}
PASSING = {"offpolicy_gain_dr": 0.01, "routing_p95_ms": 1.2, "expert_share_max": 0.6}


def outcomes(metrics: dict[str, object]) -> dict[str, bool]:
    return {o.check.metric: o.passed for o in run_gate(GateProfile.model_validate(PROFILE), metrics)}


def test_each_check_holds_its_bounds_inclusive() -> None:
    assert all(outcomes(PASSING).values())
    assert all(outcomes({"offpolicy_gain_dr": 0.0, "routing_p95_ms": 5.0, "expert_share_max": 0.9}).values())
    assert outcomes({**PASSING, "offpolicy_gain_dr": -0.001})["offpolicy_gain_dr"] is False
    assert outcomes({**PASSING, "routing_p95_ms": 5.01})["routing_p95_ms"] is False
    assert outcomes({**PASSING, "expert_share_max": 0.95})["expert_share_max"] is False
    assert outcomes({**PASSING, "expert_share_max": 0.1})["expert_share_max"] is False


@pytest.mark.parametrize("value", [None, float("nan"), float("inf"), "0.5", True])
def test_a_missing_or_non_numeric_metric_fails(value: object) -> None:
    metrics = {**PASSING, "routing_p95_ms": value}
    if value is None:
        del metrics["routing_p95_ms"]
    result = outcomes(metrics)
    assert result["routing_p95_ms"] is False and result["offpolicy_gain_dr"] is True


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not a gate profile"),
        (json.dumps({"checks": []}), "checks"),
        (json.dumps({"checks": [{"metric": "x"}]}), "needs a min, a max or both"),
        (json.dumps({"checks": [{"metric": "x", "min": 1, "typo": 2}]}), "typo"),
    ],
)
def test_a_bad_profile_says_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "gate.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        load_profile(path)


def test_the_example_profile_loads() -> None:
    profile = load_profile(Path(__file__).resolve().parents[2] / "training" / "gates" / "default.json")
    assert {"offpolicy_gain_dr", "base_test_auc_change", "n_records", "routing_p95_ms"} <= {
        check.metric for check in profile.checks
    }


def registered(tmp_path: Path, metrics: dict[str, float]) -> tuple[str, int]:
    """A SQLite database holding one version of router `r` with these metrics."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    Manifest("reward-distilled", "r", "v1", "hash", ["a", "b"], metrics=metrics).write(artifact)
    return url, RouterVersions(engine).register("r", artifact).id


def gate(tmp_path: Path, url: str, version: str, *options: str) -> tuple[int, str]:
    profile = tmp_path / "gate.json"
    profile.write_text(json.dumps(PROFILE))
    args = ["gate", "--router", "r", "--version", version, "--profile", str(profile), "--database-url", url, *options]
    result = CliRunner().invoke(app, args, terminal_width=200)
    return result.exit_code, result.output


def test_gate_cli_exits_0_when_every_check_passes(tmp_path: Path) -> None:
    url, version_id = registered(tmp_path, PASSING)
    code, output = gate(tmp_path, url, str(version_id))
    assert code == 0, output
    assert "gate passed" in output and "1.2" in output
    assert gate(tmp_path, url, "v1")[0] == 0  # by its version string too


def test_gate_cli_exits_1_on_a_failed_or_missing_metric(tmp_path: Path) -> None:
    url, version_id = registered(tmp_path, {"offpolicy_gain_dr": -0.02, "routing_p95_ms": 1.0})
    code, output = gate(tmp_path, url, str(version_id))
    assert code == 1
    assert "missing" in output and "gate failed" in output
    assert "offpolicy_gain_dr" in output.split("gate failed")[1] and "expert_share_max" in output.split("gate failed")[1]


def test_gate_cli_on_an_unknown_version_or_a_bad_profile_exits_nonzero(tmp_path: Path) -> None:
    url, _ = registered(tmp_path, PASSING)
    code, output = gate(tmp_path, url, "404")
    assert code == 1 and "no version '404'" in output
    (tmp_path / "bad.json").write_text("{}")
    args = ["gate", "--router", "r", "--version", "v1", "--profile", str(tmp_path / "bad.json"), "--database-url", url]
    result = CliRunner().invoke(app, args)
    words = " ".join(result.output.replace("│", " ").split())  # the error panel wraps at the terminal's width
    assert result.exit_code == 2 and "not a gate profile: checks: Field required" in words


def statuses(url: str) -> dict[str, str]:
    return {info.version: info.status for info in RouterVersions(create_engine(url)).list("r")}


def test_gate_cli_promotes_only_a_version_that_passes(tmp_path: Path) -> None:
    url, active_id = registered(tmp_path, PASSING)
    versions = RouterVersions(create_engine(url))
    versions.set_status(active_id, "active")
    for name, metrics in (("good", PASSING), ("bad", {**PASSING, "routing_p95_ms": 9.0})):
        artifact = tmp_path / name
        artifact.mkdir()
        Manifest("reward-distilled", "r", name, name, ["a", "b"], metrics=metrics).write(artifact)
        versions.register("r", artifact)

    code, output = gate(tmp_path, url, "bad", "--promote")
    assert code == 1 and "gate failed" in output
    assert statuses(url) == {"v1": "active", "good": "candidate", "bad": "candidate"}

    assert gate(tmp_path, url, "good")[0] == 0  # without --promote a pass changes nothing
    assert statuses(url) == {"v1": "active", "good": "candidate", "bad": "candidate"}

    code, output = gate(tmp_path, url, "good", "--promote")
    assert code == 0 and "gate passed" in output and "(good) is active" in output
    assert statuses(url) == {"v1": "retired", "good": "active", "bad": "candidate"}
