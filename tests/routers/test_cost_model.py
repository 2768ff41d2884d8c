"""routers/cost.py: when a cost model is fitted, how it is stored and loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers.cost import COST_FILE, CostModel

TEXTS = [" ".join(["integral"] * (i + 1) + ["poem"] * (20 - i)) for i in range(20)]


def costs(n: int) -> np.ndarray:
    lengths = np.array([len(text) for text in TEXTS[:n]], dtype=float)
    return np.stack([lengths * 2e-6, lengths * 1e-7], axis=1)


def test_a_cost_model_needs_ten_rows_of_known_costs() -> None:
    assert CostModel.fit(TEXTS[:10], costs(10)) is not None
    assert CostModel.fit(TEXTS[:9], costs(9)) is None
    partly = costs(12)
    partly[[0, 5, 7], 1] = 0.0  # a row with any unknown cost does not count
    assert CostModel.fit(TEXTS[:12], partly) is None


def test_the_model_is_stored_in_float32_and_predicts_float64(tmp_path: Path) -> None:
    model = CostModel.fit(TEXTS, costs(20))
    assert model is not None
    assert model.coef.dtype == np.float32 and model.intercept.dtype == np.float32  # a router artifact stays small
    predicted = model(TEXTS[:3])
    assert predicted.dtype == np.float64 and predicted.shape == (3, 2)
    model.save(tmp_path)
    loaded = CostModel.load(tmp_path)
    assert loaded is not None and loaded.coef.dtype == np.float32
    np.testing.assert_array_equal(loaded(TEXTS[:3]), predicted)


def test_loading_never_unpickles(tmp_path: Path) -> None:
    model = CostModel.fit(TEXTS, costs(20))
    assert model is not None
    model.save(tmp_path)
    np.savez(tmp_path / COST_FILE, coef=np.array([object()], dtype=object), intercept=model.intercept)
    with pytest.raises(ValueError, match="allow_pickle"):
        CostModel.load(tmp_path)
