"""The off-policy estimators on a synthetic bandit whose true value is known."""

from __future__ import annotations

import numpy as np
import pytest

from training.offpolicy import dr_gain, estimate

# Two kinds of request, three experts: the mean reward of each expert on each kind.
MEANS = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.5]])
LOGGING_TOP = np.array([0, 1])  # the logging policy's choice per kind: right on kind 0, poor on kind 1
TARGET = np.array([0, 2])  # the policy to value: agrees on kind 0, picks what the log rarely tried on kind 1
EPSILON = 0.3
TRUE_VALUE = 0.5 * MEANS[0, 0] + 0.5 * MEANS[1, 2]  # 0.7


def logged_bandit(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Kinds, logged choices (epsilon-greedy: the top one with 1 - eps, each other one with eps / 2), their
    propensities and 0/1 rewards."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    top = LOGGING_TOP[kind]
    explored = rng.random(n) < EPSILON
    other = (top + rng.integers(1, 3, n)) % 3
    action = np.where(explored, other, top)
    propensity = np.where(action == top, 1 - EPSILON, EPSILON / 2)
    reward = (rng.random(n) < MEANS[kind, action]).astype(float)
    return kind, action, propensity, reward


def test_snips_and_dr_recover_the_true_value_of_a_policy_the_log_rarely_followed() -> None:
    kind, action, propensity, reward = logged_bandit(40_000)
    wrong_model = np.full((len(kind), 3), 0.5)  # a reward model that knows nothing: DR must still be right
    result = estimate(TARGET[kind], action, propensity, reward, wrong_model)
    assert result.snips == pytest.approx(TRUE_VALUE, abs=0.02)
    assert result.dr == pytest.approx(TRUE_VALUE, abs=0.02)
    assert abs(result.dr - TRUE_VALUE) < 4 * result.dr_stderr + 1e-9  # the error bar covers the truth
    # What ignoring the propensities would say: the mean reward where the target agrees, over-weighting kind 0.
    agree = TARGET[kind] == action
    assert reward[agree].mean() > TRUE_VALUE + 0.08
    assert result.matched == int(agree.sum()) and result.n == len(kind)


def test_with_an_exact_reward_model_dr_is_the_model_s_value_of_the_target() -> None:
    kind, action, propensity, _ = logged_bandit(20_000, seed=1)
    reward = MEANS[kind, action]  # noise-free rewards, which the model below knows exactly
    informed = estimate(TARGET[kind], action, propensity, reward, MEANS[kind])
    assert informed.dr == pytest.approx(MEANS[kind, TARGET[kind]].mean(), abs=1e-9)
    blind = estimate(TARGET[kind], action, propensity, reward, np.full((len(kind), 3), 0.5))
    assert informed.dr_stderr < blind.dr_stderr


def test_the_logging_policy_itself_is_valued_at_its_mean_reward() -> None:
    kind, action, propensity, reward = logged_bandit(40_000, seed=2)
    result = estimate(LOGGING_TOP[kind], action, propensity, reward, np.zeros((len(kind), 3)))
    assert result.snips == pytest.approx(0.5 * MEANS[0, 0] + 0.5 * MEANS[1, 1], abs=0.02)


def test_a_gain_on_shared_requests_has_a_paired_error_bar() -> None:
    kind, action, propensity, reward = logged_bandit(20_000, seed=3)
    model = MEANS[kind] + 0.1  # a biased reward model, shared by both estimates as in a retrain
    target = estimate(TARGET[kind], action, propensity, reward, model)
    logging = estimate(LOGGING_TOP[kind], action, propensity, reward, model)
    gain, stderr = dr_gain(target, logging)
    assert gain == pytest.approx(target.dr - logging.dr)
    assert gain == pytest.approx(TRUE_VALUE - (0.5 * MEANS[0, 0] + 0.5 * MEANS[1, 1]), abs=3 * stderr)
    # Kind 0's requests count alike in both (the policies agree there): pairing takes their noise out.
    assert stderr < np.hypot(target.dr_stderr, logging.dr_stderr)
    with pytest.raises(ValueError, match="same requests"):
        dr_gain(target, estimate(TARGET[kind][:10], action[:10], propensity[:10], reward[:10], model[:10]))


def test_a_policy_that_never_agrees_with_the_log_has_no_snips_and_metrics_say_so() -> None:
    logged = np.zeros(10, dtype=np.int64)
    result = estimate(np.ones(10, dtype=np.int64), logged, np.ones(10), np.ones(10), np.full((10, 2), 0.25))
    assert result.snips is None and result.matched == 0
    assert result.dr == pytest.approx(0.25)  # the reward model alone
    assert set(result.metrics("offpolicy")) == {"offpolicy_dr", "offpolicy_dr_stderr", "offpolicy_matched"}


@pytest.mark.parametrize("propensity", [0.0, 1.5])
def test_propensities_outside_zero_to_one_are_refused(propensity: float) -> None:
    with pytest.raises(ValueError, match="propensities"):
        estimate(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64), np.full(3, propensity), np.ones(3),
                 np.zeros((3, 1)))
