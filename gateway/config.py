"""The gateway's YAML config: experts, the vLLM servers to launch, routers and virtual models.

Loaded once at start. Any invalid field fails loudly with the field's path in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from experts.combine import CascadeConfig, SynthesisConfig, VoteConfig
from experts.registry import ExpertConfig, Fleet, Strict
from routers import FAMILIES

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")


class RouterConfig(Strict):
    name: str
    artifact: Path = Field(description="trained artifact directory (relative to the working directory)")
    family: str = Field("embedding-domain", description="what `moe up` trains into `artifact` when it is missing")

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in FAMILIES:
            raise ValueError(f"unknown router family {family!r}; known: {sorted(FAMILIES)}")
        return family


class ExplorationConfig(Strict):
    """A share of requests sent to an expert other than the router's first choice, so that retraining from the log
    learns what the other experts would have answered. Marked in the log (with the choice's propensity) and in the
    `x-moe-explored` response header."""

    epsilon: float = Field(ge=0, lt=1, description="share of requests that explore")
    distribution: Literal["uniform", "scores"] = Field(
        "uniform", description="how the explored expert is drawn from the others: evenly, or by the router's scores"
    )


class VirtualModelConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[^:]+$")]  # `name:knob` picks a cost knob (a cascade: `agree`) per request
    router: str
    policy: str | None = Field(None, description="default cost knob, e.g. 0.3, m0.05 or q95 (see routers/policy.py)")
    synthesis: SynthesisConfig | None = Field(None, description="answer with several experts and an aggregator")
    vote: VoteConfig | None = Field(None, description="answer with several experts' weighted-majority choice")
    cascade: CascadeConfig | None = Field(None, description="ask experts cheapest first until enough agree")
    exploration: ExplorationConfig | None = Field(None, description="off by default: see ExplorationConfig")
    description: str = ""


class GatewayConfig(Fleet):
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
            _check_aggregation(f"virtual_models.{i}", vm, {e.name for e in self.experts})
        bases = {e.api_base.rstrip("/") for e in self.experts if e.api_base}
        for i, server in enumerate(self.servers):
            if server.api_base not in bases:
                raise ValueError(f"servers.{i}: no expert has api_base {server.api_base}")
        return self

    def expert(self, name: str) -> ExpertConfig:
        return next(e for e in self.experts if e.name == name)


class ConfigError(ValueError):
    """Raised with a message naming the bad field, e.g. `experts.0.api_base: ...`."""


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{section}: duplicate name {name!r}")
        seen.add(name)


def _check_aggregation(path: str, vm: VirtualModelConfig, experts: set[str]) -> None:
    """At most one way of combining experts per virtual model, naming only experts that exist."""
    modes = [mode for mode, config in (("synthesis", vm.synthesis), ("vote", vm.vote), ("cascade", vm.cascade)) if config]
    if len(modes) > 1:
        raise ValueError(f"{path}: {' and '.join(modes)} exclude each other: set one")
    if modes and vm.exploration:
        raise ValueError(f"{path}.exploration: explores one expert's answers; {modes[0]} asks several")
    named: list[tuple[str, str]] = []
    if vm.synthesis and vm.synthesis.aggregator:
        named.append(("synthesis.aggregator", vm.synthesis.aggregator))
    if vm.vote:
        named += [("vote.accuracy", name) for name in vm.vote.accuracy]
    if vm.cascade:
        if vm.policy is not None:  # the model name's suffix is the cascade's `agree`, so it has no cost knob
            raise ValueError(f"{path}.policy: a cascade takes no cost knob (`{vm.name}:<n>` sets its `agree`)")
        order = list(vm.cascade.order or ())
        _unique(f"{path}.cascade.order", order)
        named += [("cascade.accuracy", name) for name in vm.cascade.accuracy]
        named += [("cascade.order", name) for name in order]
    for field, name in named:
        if name not in experts:
            raise ValueError(f"{path}.{field}: {name!r} is not an expert")


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
