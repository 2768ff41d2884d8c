"""What a request's `model` names: a virtual model (routed, with its cost knob or a cascade's agreement) or one
expert (direct)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from experts.registry import ExpertConfig
from gateway.config import GatewayConfig, VirtualModelConfig
from gateway.errors import APIError
from routers.base import Router
from routers.policy import CostPolicy, parse_knob


@dataclass(frozen=True)
class Target:
    requested: str
    virtual_model: VirtualModelConfig | None = None
    router: Router | None = None
    expert: ExpertConfig | None = None
    knob: str | None = None
    policy: CostPolicy | None = None
    agree: int | None = None  # a cascade's: called experts that must name one choice before it stops
    use_cache: bool = False


class Targets:
    def __init__(self, config: GatewayConfig, routers: Mapping[str, Router]) -> None:
        self.routers = routers
        self._virtual = {v.name: v for v in config.virtual_models}
        self._experts = {e.name: e for e in config.experts}

    def resolve(self, model: str) -> Target:
        """`moe-auto`, `moe-auto:<cost knob>` (e.g. `:0.3`, `:q95`), a cascade's `<name>:<agree>` (e.g. `:3`), or an
        expert's own name."""
        if expert := self._experts.get(model):
            return Target(model, expert=expert)
        name, _, knob = model.partition(":")
        if vm := self._virtual.get(name):
            router = self.routers[vm.router]
            if vm.cascade is not None:  # its order sets what it costs; its suffix sets how far it escalates
                knob = knob or str(vm.cascade.agree)
                # With `escalate: router`, the configured cost knob picks the expert it escalates to.
                policy = _policy(vm.policy, router) if vm.policy else None
                return Target(model, virtual_model=vm, router=router, knob=knob, agree=_agreement(knob), policy=policy)
            knob = knob or vm.policy
            if not knob:
                return Target(model, virtual_model=vm, router=router)
            return Target(model, virtual_model=vm, router=router, knob=knob, policy=_policy(knob, router))
        raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def _policy(knob: str, router: Router) -> CostPolicy:
    try:
        return parse_knob(knob, router.manifest.params.get("calibration") if router.manifest else None)
    except ValueError as exc:
        raise APIError(400, str(exc), param="model", code="invalid_cost_knob") from None


def _agreement(knob: str) -> int:
    """A cascade's per-request knob: how many called experts must name one choice, a whole number 1-99."""
    if not (knob.isascii() and knob.isdigit()) or not 1 <= len(knob) <= 2 or int(knob) < 1:
        raise APIError(
            400, f"bad cascade knob {knob!r}: the number of experts that must agree (e.g. `:2`)",
            param="model", code="invalid_cascade_knob",
        )
    return int(knob)
