"""The contract every router family keeps: fit / score / save on the training side, decide in the gateway.

A router knows nothing of HTTP or of how the gateway is configured: it is handed the expert
profiles it routes between and an artifact directory. Heavy libraries (torch,
sentence-transformers, scikit-learn) are imported inside the family that needs them, so importing
this module costs nothing.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from routers.manifest import ExpertProfile, Manifest
from routers.policy import CostPolicy, expected_cost

if TYPE_CHECKING:
    from routers.cost import CostModel
    from routers.dataset import RoutingDataset
    from routers.features import QueryFeatures

@dataclass(frozen=True)
class ExpertScore:
    name: str
    score: float


@dataclass
class Decision:
    """The router's answer for one query; what is logged, exposed in headers and replayed offline."""

    router: str
    version: str
    ranked: list[ExpertScore]
    confidence: float
    latency_ms: float
    # Experts recruited to answer together (Symbolic-MoE); one expert when routing to a single model.
    recruited: list[str] = field(default_factory=list)
    aggregator: str | None = None

    @property
    def chosen(self) -> str:
        return self.recruited[0] if self.recruited else self.ranked[0].name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# What a router reads of a long turn: its start and its end (where a question about a pasted document
# usually is). Reading all of a 4 MB turn took 130 ms of the gateway's event loop; no training text is
# this long.
MAX_QUERY_CHARS = 16_000


def query_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text a router reads: the last user turn (text parts of multi-part content joined), its first and
    last MAX_QUERY_CHARS / 2 characters when it is longer."""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = content_text(message.get("content"))
            if len(text) > MAX_QUERY_CHARS:
                half = MAX_QUERY_CHARS // 2
                return f"{text[:half]}\n{text[-half:]}"
            return text
    return ""


def content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(
        part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
    )


class Router(ABC):
    """A trained router: scores every expert for a query; `decide` ranks them.

    Subclasses implement `fit` (on a dataset's train split, tuned and scored on dev), `score` (higher is
    better, one column per expert in `self.experts` order), `_save` and `_load`. `decide` is the template
    the gateway and the evaluation both call.
    """

    family: ClassVar[str]
    # Whether it routes between the experts a gateway config declares (by their declared domains) rather than
    # the experts the training data scores: what it is built with before `fit`.
    experts_from_config: ClassVar[bool] = False
    # Whether `fit` learns from partial scores (NaN where an expert's reward is unknown: bandit feedback from the
    # decision log, where only the chosen expert answered) and honours `RoutingDataset.weights`.
    learns_from_partial_scores: ClassVar[bool] = False
    features: QueryFeatures | None = None  # what it reads of a query, for the families that share them
    cost_model: CostModel | None = None  # each expert's cost predicted per query, when trained with costs

    def __init__(self, experts: Sequence[ExpertProfile], manifest: Manifest | None = None) -> None:
        if not experts:
            raise ValueError("a router needs at least one expert")
        self.experts = list(experts)
        self.manifest = manifest

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.family

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else "untrained"

    @property
    def inline(self) -> bool:
        """Whether a decision is cheap enough to take on the gateway's event loop (no forward pass)."""
        return self.features is not None and self.features.cheap

    @abstractmethod
    def fit(self, train: RoutingDataset, dev: RoutingDataset, **params: Any) -> Self:
        """Learn from `train`, choose what needs choosing on `dev`; sets the manifest. `params` are the family's
        own (e.g. `features`, what it reads of a query)."""

    @abstractmethod
    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), len(self.experts)): how good each expert is expected to be."""

    def expected_cost(self) -> np.ndarray:
        """USD per query for each expert, on average: what a budget over several experts counts."""
        return expected_cost(self.experts, self.manifest)

    def query_cost(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), len(self.experts)): USD each expert is expected to cost for each query, what a
        cost-aware policy trades quality against (the average when the router predicts no per-query cost)."""
        if self.cost_model is not None:
            return self.cost_model(texts)
        return np.tile(self.expected_cost(), (len(texts), 1))

    def decide(self, messages: Sequence[Mapping[str, Any]], policy: CostPolicy | None = None) -> Decision:
        """Rank the experts by predicted quality, or by `policy` (quality traded against expected cost)."""
        return self.decide_many([(messages, policy)])[0]

    def decide_many(self, queries: Sequence[tuple[Sequence[Mapping[str, Any]], CostPolicy | None]]) -> list[Decision]:
        """`decide` for several conversations in one forward pass: what a busy gateway or a batch run does."""
        started = time.perf_counter()
        texts = [query_text(messages) for messages, _ in queries]
        scores = self.score(texts)
        costs = self.query_cost(texts) if any(policy is not None for _, policy in queries) else [None] * len(texts)
        latency_ms = (time.perf_counter() - started) * 1000
        return [
            self._decision(row, policy, cost, latency_ms)
            for row, cost, (_, policy) in zip(scores, costs, queries, strict=True)
        ]

    def _decision(
        self, scores: np.ndarray, policy: CostPolicy | None, cost: np.ndarray | None, latency_ms: float
    ) -> Decision:
        """`cost`: the query's expected USD per expert, given when there is a policy to trade it against."""
        if policy is None:
            order = np.argsort(-scores, kind="stable")
        else:
            assert cost is not None, "a policy needs the query's cost"
            order = policy.rank(scores, cost)
        ranked = [ExpertScore(self.experts[i].name, float(scores[i])) for i in order]
        total = float(np.sum(np.clip(scores, 0, None)))
        confidence = ranked[0].score / total if total > 0 else 0.0
        return Decision(
            router=self.name,
            version=self.version,
            ranked=ranked,
            confidence=confidence,
            latency_ms=latency_ms,
            recruited=[ranked[0].name],
        )

    def save(self, directory: Path) -> None:
        if self.manifest is None:
            raise RuntimeError("fit the router before saving it")
        directory.mkdir(parents=True, exist_ok=True)
        self._save(directory)
        self.manifest.write(directory)

    @classmethod
    def load(cls, directory: Path, experts: Sequence[ExpertProfile]) -> Router:
        manifest = Manifest.read(directory)
        return cls._load(directory, manifest, experts)

    @abstractmethod
    def _save(self, directory: Path) -> None: ...

    @classmethod
    @abstractmethod
    def _load(cls, directory: Path, manifest: Manifest, experts: Sequence[ExpertProfile]) -> Router: ...
