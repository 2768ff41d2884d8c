"""The gateway's routing batcher: queries queued while the router is busy share one forward pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.chat.routing import RoutingBatcher
from routers.base import ExpertProfile, Manifest, Router
from routers.dataset import RoutingDataset


class GatedRouter(Router):
    """Scores 'a' above 'b' when the text says a; its first pass waits until the test opens the gate."""

    family = "gated"

    def __init__(self) -> None:
        super().__init__([ExpertProfile("a"), ExpertProfile("b")])
        self.gate = threading.Event()
        self.batches: list[list[str]] = []

    def fit(self, train: RoutingDataset, dev: RoutingDataset, **params: Any) -> GatedRouter:
        raise NotImplementedError

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not self.batches:
            self.gate.wait(5)
        self.batches.append(list(texts))
        if any(text == "boom" for text in texts):
            raise RuntimeError("encoder failed")
        return np.array([[1.0, 0.0] if text.startswith("a") else [0.0, 1.0] for text in texts])

    def _save(self, directory: Path) -> None: ...

    @classmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Router:
        raise NotImplementedError


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_queries_queued_behind_a_busy_router_go_through_in_one_pass() -> None:
    router, batcher = GatedRouter(), RoutingBatcher()
    first = asyncio.create_task(batcher.decide(router, ask("a first"), None))
    await asyncio.sleep(0.05)  # the first pass is now running and blocked on the gate
    queued = [asyncio.create_task(batcher.decide(router, ask(text), None)) for text in ("b 1", "a 2", "b 3")]
    await asyncio.sleep(0.05)
    router.gate.set()
    decisions = await asyncio.gather(first, *queued)
    assert router.batches == [["a first"], ["b 1", "a 2", "b 3"]]
    assert [d.chosen for d in decisions] == ["a", "b", "a", "b"]  # each caller gets its own decision
    batcher.close()


async def test_a_caller_that_gave_up_is_left_out_and_a_failure_reaches_only_its_batch() -> None:
    router, batcher = GatedRouter(), RoutingBatcher(max_batch=2)
    first = asyncio.create_task(batcher.decide(router, ask("a first"), None))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(batcher.decide(router, ask("b gone"), None))
    failing = [asyncio.create_task(batcher.decide(router, ask(text), None)) for text in ("boom", "a with boom")]
    after = asyncio.create_task(batcher.decide(router, ask("b after"), None))
    await asyncio.sleep(0.05)
    gone.cancel()  # its client hung up while it was queued
    router.gate.set()
    assert (await first).chosen == "a"
    for task in failing:
        with pytest.raises(RuntimeError, match="encoder failed"):
            await task
    assert (await after).chosen == "b"  # the next batch is unaffected
    assert router.batches == [["a first"], ["boom", "a with boom"], ["b after"]]
    batcher.close()


class CheapRouter(GatedRouter):
    """A router without a forward pass: notes the thread each pass runs on."""

    inline = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def score(self, texts: Sequence[str]) -> np.ndarray:
        self.threads.append(threading.current_thread())
        return np.array([[1.0, 0.0] if text.startswith("a") else [0.0, 1.0] for text in texts])


async def test_a_cheap_router_decides_on_the_event_loop() -> None:
    router, batcher = CheapRouter(), RoutingBatcher()
    decisions = await asyncio.gather(*(batcher.decide(router, ask(text), None) for text in ("a 1", "b 2")))
    assert [d.chosen for d in decisions] == ["a", "b"]
    assert router.threads == [threading.current_thread()] * 2  # one pass per query, none on the router thread
    batcher.close()
