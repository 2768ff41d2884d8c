"""Invalid config fails at start with a message naming the bad field; the embedded default is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import DEFAULT_CONFIG, ConfigError, load_config

VALID = {
    "experts": [{"name": "a", "model": "m", "api_base": "http://127.0.0.1:9/v1", "domains": ["math"]}],
    "routers": [{"name": "r", "artifact": "var/routers/x"}],
    "virtual_models": [{"name": "moe-auto", "router": "r"}],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_embedded_default_is_valid() -> None:
    config = load_config(DEFAULT_CONFIG)
    assert [v.name for v in config.virtual_models] == ["moe-auto"]
    assert config.served_names(config.servers[0]) == ["smollm-stem", "smollm-humanities", "smollm-general"]


def test_litellm_experts_may_leave_the_address_to_their_provider(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(VALID))
    config["experts"].append({"name": "claude", "provider": "litellm", "model": "anthropic/claude-3-5-haiku-20241022",
                              "api_key_env": "ANTHROPIC_API_KEY"})
    config["routers"][0]["family"] = "skill-based"
    loaded = load_config(write(tmp_path, config))
    assert loaded.expert("claude").api_base is None and loaded.routers[0].family == "skill-based"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["experts"][0].update(api_base="localhost:8000"), "experts.0.api_base"),
        (lambda c: c["experts"][0].update(price_per_mtok=-1), "experts.0.price_per_mtok"),
        (lambda c: c["experts"][0].update(timeout_s="soon"), "experts.0.timeout_s"),
        (lambda c: c["experts"][0].update(colour="blue"), "experts.0.colour"),
        (lambda c: c["experts"][0].pop("model"), "experts.0.model"),
        (lambda c: c["virtual_models"][0].update(router="missing"), "virtual_models.0.router"),
        (lambda c: c["experts"].append(dict(c["experts"][0])), "duplicate name 'a'"),
        (lambda c: c.update(experts=[]), "experts"),
        (lambda c: c.update(servers=[{"name": "s", "model": "x", "port": 7}]), "servers.0"),
        (lambda c: c["experts"][0].pop("api_base"), "experts.0: Value error, api_base"),  # an OpenAI server needs one
        (lambda c: c["experts"][0].update(provider="bedrock"), "experts.0.provider"),
        (lambda c: c["experts"][0].update(api_key_env="sk-the-key-itself"), "experts.0.api_key_env"),
        (lambda c: c["routers"][0].update(family="bert"), "routers.0.family"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, mutate, message: str) -> None:  # noqa: ANN001
    config = yaml.safe_load(yaml.safe_dump(VALID))
    mutate(config)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write(tmp_path, config))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_cli_reports_the_bad_field_and_exits_non_zero(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(VALID))
    config["experts"][0]["api_base"] = "nope"
    result = CliRunner().invoke(app, ["check-config", str(write(tmp_path, config))])
    assert result.exit_code == 2
    assert "experts.0.api_base" in result.output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_without_a_trained_router_says_how_to_train_one_and_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    config = yaml.safe_load(yaml.safe_dump(VALID))
    config["routers"][0]["artifact"] = str(tmp_path / "untrained")
    monkeypatch.setenv("MOE_CONFIG", str(write(tmp_path, config)))
    result = CliRunner().invoke(app, ["serve", "--port", "9", "--workers", workers])
    assert result.exit_code == 2  # before uvicorn starts: with 2 workers, its supervisor would have exited 0
    assert f"no trained artifact at {tmp_path / 'untrained'}" in result.output
    assert "moe router train" in result.output
