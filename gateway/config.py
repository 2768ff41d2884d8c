"""The gateway's YAML config: experts, the vLLM servers to launch, routers and virtual models.

Loaded once at start. Any invalid field fails loudly with the field's path in the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import Field, ImportString, ValidationError, field_validator, model_validator

from experts.combine import CascadeConfig, SynthesisConfig, VoteConfig
from experts.registry import ExpertConfig, Fleet, Strict
from routers import FAMILIES

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
log = logging.getLogger(__name__)


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


class StoreTextConfig(Strict):
    """The virtual model's query text (its messages, as JSON) and answer text kept in the decision log, for
    retraining and judging. Off unless set: the log keeps no text (MOE_LOG_PROMPTS keeps every request's,
    unredacted). The redaction hook is imported once, when the config loads; the decision log's writer applies it,
    off the request path, to every text a message or the answer holds, before anything reaches the database or
    the disk."""

    retention_days: int | None = Field(
        None, gt=0, description="`moe db prune` clears the text of older decisions (the rest of the row stays)"
    )
    redact: ImportString[Callable[[str], str]] | None = Field(
        None, description="`package.module:function`, str -> str, e.g. masking e-mail addresses"
    )

    def kept(self, text: str) -> str | None:
        """`text` as the log keeps it: redacted; None, so that nothing unredacted is kept, when the hook fails."""
        if self.redact is None:
            return text
        try:
            redacted = self.redact(text)
        except Exception as exc:  # noqa: BLE001 - an operator's hook: its failure costs the text, never the record
            log.warning("store_text.redact raised %s: the text is not kept", type(exc).__name__)
            return None
        if not isinstance(redacted, str):
            log.warning("store_text.redact returned %s, not a str: the text is not kept", type(redacted).__name__)
            return None
        return redacted

    def kept_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The messages with each text in them (a string content, or a list's text parts) as `kept` leaves it; None
        when any cannot be kept. Redacted piece by piece, so the kept prompt stays JSON that retraining reads."""
        if self.redact is None:
            return messages
        kept = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                content = self.kept(content)
            elif isinstance(content, list):
                content = self._kept_parts(content)
            if content is None and message.get("content") is not None:
                return None
            kept.append({**message, "content": content} if "content" in message else message)
        return kept

    def _kept_parts(self, parts: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        kept = []
        for part in parts:
            if isinstance(part.get("text"), str):
                text = self.kept(part["text"])
                if text is None:
                    return None
                part = {**part, "text": text}
            kept.append(part)
        return kept


EVERY_REQUEST = StoreTextConfig()  # MOE_LOG_PROMPTS: every request's text, unredacted, kept as long as its row


def stored_text(virtual_model: VirtualModelConfig | None, every_request: bool) -> StoreTextConfig | None:
    """How a request's text is kept: as its virtual model's `store_text` says; else, with MOE_LOG_PROMPTS
    (`every_request`), unredacted; else not at all."""
    if virtual_model is not None and virtual_model.store_text is not None:
        return virtual_model.store_text
    return EVERY_REQUEST if every_request else None


class VirtualModelConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[^:]+$")]  # `name:knob` picks a cost knob (a cascade: `agree`) per request
    router: str
    policy: str | None = Field(None, description="default cost knob, e.g. 0.3, m0.05 or q95 (see routers/policy.py)")
    synthesis: SynthesisConfig | None = Field(None, description="answer with several experts and an aggregator")
    vote: VoteConfig | None = Field(None, description="answer with several experts' weighted-majority choice")
    cascade: CascadeConfig | None = Field(None, description="ask experts cheapest first until enough agree")
    exploration: ExplorationConfig | None = Field(None, description="off by default: see ExplorationConfig")
    store_text: StoreTextConfig | None = Field(None, description="keep query and answer text: see StoreTextConfig")
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
        # The model name's suffix is the cascade's `agree`; only the expert it escalates to is picked by a cost knob.
        if vm.policy is not None and vm.cascade.escalate != "router":
            raise ValueError(
                f"{path}.policy: a cascade takes no cost knob unless `escalate: router` (`{vm.name}:<n>` sets its `agree`)"
            )
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
