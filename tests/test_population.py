"""Population test error/loss from 2m Gaussian projections (tasks/synthetic/population.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional

from initmatters_core.seeding import Stream, numpy_rng
from initmatters_core.tasks.synthetic.data import balanced_labels, sample_examples, signal_vector
from initmatters_core.tasks.synthetic.model import model_from_weight
from initmatters_core.tasks.synthetic.population import (
    POPULATION_COLUMNS,
    POPULATION_METRICS,
    margin_law,
    population_draws,
    population_metrics,
)
from initmatters_core.tasks.synthetic.task import ROUND_COLUMNS, round_columns, server_setup

DIM, FILTERS, NOISE_STD, LABEL_NOISE = 30, 4, 1.0, 0.2
SIGNAL = signal_vector(DIM, 1.5)
SAMPLES = 10**6


def random_weight() -> torch.Tensor:
    return 0.3 * torch.randn(2, FILTERS, DIM, generator=torch.Generator().manual_seed(1))


def trained_weight() -> torch.Tensor:
    """Mostly aligned filters (one misaligned per class) plus noise of the size of sigma_p / sqrt(d)."""
    direction = SIGNAL / SIGNAL.norm()
    gammas = torch.tensor([[0.8, 0.5, 0.3, -0.2], [0.6, 0.4, 0.2, -0.3]])  # <w_jr, j mu/||mu||>
    weight = 0.2 * torch.randn(2, FILTERS, DIM, generator=torch.Generator().manual_seed(2))
    weight -= (weight @ direction)[..., None] * direction
    return weight + (gammas * torch.tensor([1.0, -1.0])[:, None])[..., None] * direction


def brute_force(weight: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(mean, s.e.) of each metric over SAMPLES full d-dimensional test examples through the model."""
    rng = numpy_rng(99, Stream.TEST)
    data = sample_examples(balanced_labels(SAMPLES, rng), SIGNAL, NOISE_STD, LABEL_NOISE, rng)
    with torch.no_grad():
        margins = model_from_weight(weight)(data.features).double()
    per_example = {}
    for suffix, labels in (("", data.true_labels.double()), ("_observed", data.labels.double())):
        per_example[f"pop_test_error{suffix}"] = (labels * margins <= 0).double()
        per_example[f"pop_test_loss{suffix}"] = functional.softplus(-labels * margins)
    return {name: (float(v.mean()), float(v.std()) / math.sqrt(SAMPLES)) for name, v in per_example.items()}


@pytest.mark.parametrize("weight_fn", [random_weight, trained_weight], ids=["random", "trained"])
def test_agrees_with_brute_force_sampling(weight_fn) -> None:
    weight = weight_fn()
    draws = torch.from_numpy(np.random.default_rng(5).standard_normal((SAMPLES, 2 * FILTERS)))
    estimate = population_metrics(weight, SIGNAL, NOISE_STD, LABEL_NOISE, draws)
    reference = brute_force(weight)
    for name in POPULATION_METRICS:
        mean, se = reference[name]
        combined = math.hypot(se, estimate[f"{name}_se"])
        print(f"{weight_fn.__name__} {name}: estimate {estimate[name]:.5f} ± {estimate[f'{name}_se']:.5f}, "
              f"brute force {mean:.5f} ± {se:.5f}, z = {(estimate[name] - mean) / combined:+.2f}")
        assert abs(estimate[name] - mean) <= 3 * combined, name
    assert 0.05 < estimate["pop_test_error"] < 0.95  # not trivial


def test_zero_weight_is_all_errors_and_log2_loss() -> None:
    draws = population_draws(0, 1000, 2 * FILTERS)
    metrics = population_metrics(torch.zeros(2, FILTERS, DIM), SIGNAL, NOISE_STD, LABEL_NOISE, draws)
    for name in ("pop_test_error", "pop_test_error_observed"):
        assert metrics[name] == 1.0 and metrics[f"{name}_se"] == 0.0
    for name in ("pop_test_loss", "pop_test_loss_observed"):
        assert metrics[name] == pytest.approx(math.log(2), abs=1e-7)
        assert metrics[f"{name}_se"] == pytest.approx(0.0, abs=1e-9)


def test_filters_parallel_to_the_signal_give_the_deterministic_answer() -> None:
    direction = SIGNAL / SIGNAL.norm()
    gammas = torch.tensor([[0.7, -0.4, 0.1, 0.3], [0.5, 0.2, -0.3, 0.05]])  # y_hat = -1 is misclassified
    weight = gammas[..., None] * direction
    draws = population_draws(3, 5000, 2 * FILTERS)
    metrics = population_metrics(weight, SIGNAL, NOISE_STD, LABEL_NOISE, draws)
    # The noise patch is orthogonal to every filter: the margin is that of x = [y_hat mu, 0] (the real model).
    features = torch.stack([torch.stack([y * SIGNAL, torch.zeros(DIM)]) for y in (1.0, -1.0)])
    with torch.no_grad():
        margins = model_from_weight(weight)(features).double()
    y_hat = torch.tensor([1.0, -1.0], dtype=torch.float64)
    error = float((y_hat * margins <= 0).double().mean())
    loss = float(functional.softplus(-y_hat * margins).mean())
    error_flipped = float((-y_hat * margins <= 0).double().mean())
    loss_flipped = float(functional.softplus(y_hat * margins).mean())
    assert metrics["pop_test_error"] == error
    assert metrics["pop_test_loss"] == pytest.approx(loss, rel=1e-6)
    assert metrics["pop_test_error_observed"] == pytest.approx((1 - LABEL_NOISE) * error + LABEL_NOISE * error_flipped)
    assert metrics["pop_test_loss_observed"] == pytest.approx(
        (1 - LABEL_NOISE) * loss + LABEL_NOISE * loss_flipped, rel=1e-6)
    assert all(metrics[f"{name}_se"] == pytest.approx(0.0, abs=1e-9) for name in POPULATION_METRICS)


def test_observed_error_is_p_plus_shrunk_clean_error() -> None:
    weight, draws = random_weight(), population_draws(4, 20000, 2 * FILTERS)
    positive, negative = margin_law(weight, SIGNAL, NOISE_STD, draws.dtype).margins(draws)
    assert (positive != 0).all() and (negative != 0).all()
    for p in (0.0, 0.1, LABEL_NOISE, 0.4):
        metrics = population_metrics(weight, SIGNAL, NOISE_STD, p, draws)
        assert metrics["pop_test_error_observed"] == pytest.approx(p + (1 - 2 * p) * metrics["pop_test_error"],
                                                                   abs=1e-6)
        assert metrics["pop_test_error_observed_se"] == pytest.approx((1 - 2 * p) * metrics["pop_test_error_se"],
                                                                      rel=1e-4)


def test_same_seed_same_columns_and_existing_columns_unchanged(compose_settings) -> None:
    on, _ = compose_settings("debug=default data.population_samples=20000")
    off, _ = compose_settings("debug=default data.population_samples=0")
    first, again, without = server_setup(on), server_setup(on), server_setup(off)
    assert first.round_columns == ROUND_COLUMNS == round_columns(on.data)
    assert without.round_columns == tuple(c for c in ROUND_COLUMNS if c not in POPULATION_COLUMNS)
    moved = {"weight": first.init_state["weight"] + 0.05 * torch.ones_like(first.init_state["weight"])}
    for state in (first.init_state, moved):
        metrics = first.central_metrics(state)
        assert set(POPULATION_COLUMNS) <= set(metrics)
        assert metrics == again.central_metrics(state)  # same seed: identical to the last digit
        assert {k: v for k, v in metrics.items() if k not in POPULATION_COLUMNS} == without.central_metrics(state)
    other, _ = compose_settings("debug=default data.population_samples=20000 seed=1")
    assert population_draws(on.seed, 10, 8).ne(population_draws(other.seed, 10, 8)).all()
