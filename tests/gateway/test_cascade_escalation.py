"""A cascade that escalates to the router's pick (`escalate: router`): the voters' disagreement hands the question to
the expert the router ranks first under the virtual model's cost knob, as training/cascade.py replays it offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.upstream import RECEIVED
from tests.gateway.support import Gateway, expert, running_gateway
from tests.gateway.test_vote_cascade import ask, gateway_config, reply, says

MODELS = {"one": "esc-one", "two": "esc-two", "best": "esc-best"}


@pytest.fixture(scope="module")
def escalating(upstream: str, router_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Voters one (B, cheapest) and two (C) never agree; best (D, dear) is the math expert the router ranks first on
    quality alone; a large cost knob makes the cheapest expert, voter one, the router's pick."""
    v1 = f"{upstream}/v1"
    experts = [
        expert("one", MODELS["one"], v1, price_per_mtok=0.1, domains=["other"], system_prompt=says("B")),
        expert("two", MODELS["two"], v1, price_per_mtok=0.2, domains=["law"], system_prompt=says("C")),
        expert("best", MODELS["best"], v1, price_per_mtok=5.0, domains=["math"], system_prompt=says("D")),
    ]
    voters = {"order": ["one", "two"], "escalate": "router"}
    config = gateway_config(
        experts, router_artifact,
        **{"moe-esc": {"cascade": voters, "policy": "0"}, "moe-esc-thrifty": {"cascade": voters, "policy": "1000"}},
    )
    db = f"sqlite:///{tmp_path_factory.mktemp('escalate') / 'decisions.db'}"
    with running_gateway(config, db, tmp_path_factory.mktemp("escalate-gw")) as gw:
        yield gw


def calls(before: dict[str, int]) -> dict[str, int]:
    return {name: RECEIVED[model] - before.get(model, 0) for name, model in MODELS.items()}


def test_disagreeing_voters_escalate_to_the_routers_pick_at_the_cost_knob(escalating: Gateway) -> None:
    before = dict(RECEIVED)
    text, _ = ask(escalating, "moe-esc")
    assert text == reply(MODELS["best"], "D")
    assert calls(before) == {"one": 1, "two": 1, "best": 1}


def test_a_large_cost_knob_escalates_to_the_cheapest_whose_answer_is_in_hand(escalating: Gateway) -> None:
    before = dict(RECEIVED)
    text, _ = ask(escalating, "moe-esc-thrifty")
    assert text == reply(MODELS["one"], "B")
    assert calls(before) == {"one": 1, "two": 1, "best": 0}
