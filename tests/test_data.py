"""The signal-plus-noise data model (docs/science.md, "Data model")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from initmatters_core.tasks.synthetic.data import (
    NOISE_PATCH,
    SIGNAL_PATCH,
    balanced_labels,
    fresh_test_set,
    sample_examples,
    signal_vector,
    source_set,
)


def _random_signal(dim: int, norm: float, seed: int) -> torch.Tensor:
    direction = np.random.default_rng(seed).normal(size=dim)
    return torch.from_numpy(norm * direction / np.linalg.norm(direction)).float()


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice([-1, 1], size=n)


def test_signal_vector_is_norm_times_e1() -> None:
    mu = signal_vector(7, 1.5)
    expected = np.zeros(7)
    expected[0] = 1.5
    np.testing.assert_array_equal(mu.numpy(), expected)
    assert mu.dtype == torch.float32


def test_noise_is_exactly_orthogonal_to_axis_signal() -> None:
    mu = signal_vector(40, 1.5)
    data = sample_examples(_labels(300, 0), mu, 1.0, 0.0, np.random.default_rng(1))
    assert data.features.shape == (300, 2, 40)
    noise = data.features[:, NOISE_PATCH, :]
    # mu = ||mu|| e_1: the projection zeroes coordinate 0 exactly, so <xi, mu> = 0 exactly.
    assert torch.count_nonzero(noise[:, 0]) == 0
    assert torch.count_nonzero(noise @ mu) == 0
    # ... and the other coordinates are genuinely random (not zeroed as well).
    assert torch.count_nonzero(noise[:, 1:]) == noise[:, 1:].numel()


def test_noise_is_orthogonal_to_a_general_signal() -> None:
    mu = _random_signal(30, 2.0, seed=5)
    data = sample_examples(_labels(500, 2), mu, 1.0, 0.0, np.random.default_rng(3))
    noise = data.noise.double().numpy()
    mu64 = mu.double().numpy()
    cosines = np.abs(noise @ mu64) / (np.linalg.norm(noise, axis=1) * np.linalg.norm(mu64))
    assert cosines.max() < 1e-6
    # Without the projection a Gaussian vector in R^30 has |cos| ~ 0.18 with mu.
    assert np.linalg.norm(noise, axis=1).min() > 1.0


def test_signal_patch_is_true_label_times_mu() -> None:
    mu = _random_signal(12, 1.5, seed=7)
    y_hat = _labels(50, 4)
    data = sample_examples(y_hat, mu, 1.0, 0.3, np.random.default_rng(0))
    expected = y_hat[:, None].astype(np.float64) * mu.double().numpy()[None, :]
    np.testing.assert_allclose(data.features[:, SIGNAL_PATCH, :].double().numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(data.true_labels.numpy(), y_hat.astype(np.float32))


@pytest.mark.parametrize("noise_std", [1.0, 2.5])
def test_noise_variance_is_sigma_p_squared_off_mu(noise_std: float) -> None:
    dim, n = 40, 4000
    data = sample_examples(_labels(n, 8), signal_vector(dim, 1.5), noise_std, 0.0, np.random.default_rng(9))
    noise = data.noise.double().numpy()[:, 1:]  # the d - 1 coordinates orthogonal to mu = ||mu|| e_1
    # Pooled over 39 * 4000 independent draws, the variance estimate is within ~1%; allow 5%.
    assert abs(noise.var() / noise_std**2 - 1.0) < 0.05
    assert abs(noise.mean()) < 0.05 * noise_std
    per_coordinate = noise.var(axis=0) / noise_std**2
    assert per_coordinate.min() > 0.85 and per_coordinate.max() < 1.15
    # Independent coordinates: off-diagonal correlations are O(1/sqrt(n)).
    corr = np.corrcoef(noise, rowvar=False)
    assert np.abs(corr - np.eye(dim - 1)).max() < 0.08


def test_noise_covariance_is_projected_for_general_signal() -> None:
    dim, n, sigma = 6, 40000, 1.5
    mu = _random_signal(dim, 1.0, seed=11).double().numpy()
    data = sample_examples(_labels(n, 1), torch.from_numpy(mu).float(), sigma, 0.0, np.random.default_rng(2))
    noise = data.noise.double().numpy()
    u = mu / np.linalg.norm(mu)
    expected = sigma**2 * (np.eye(dim) - np.outer(u, u))
    np.testing.assert_allclose(noise.T @ noise / n, expected, atol=0.06)


def test_label_flip_rate_is_p() -> None:
    y_hat = _labels(20000, 12)
    data = sample_examples(y_hat, signal_vector(5, 1.0), 1.0, 0.2, np.random.default_rng(13))
    labels, true = data.labels.numpy(), data.true_labels.numpy()
    assert set(np.unique(labels)) <= {-1.0, 1.0}
    flipped = labels != true
    np.testing.assert_array_equal(labels[flipped], -true[flipped])
    # std of the estimate is sqrt(0.2 * 0.8 / 20000) ~ 0.0028
    assert abs(flipped.mean() - 0.2) < 0.012
    # Flips do not depend on the class.
    for sign in (-1.0, 1.0):
        assert abs(flipped[true == sign].mean() - 0.2) < 0.02


def test_no_label_noise_keeps_labels() -> None:
    y_hat = _labels(1000, 3)
    data = sample_examples(y_hat, signal_vector(5, 1.0), 1.0, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(data.labels.numpy(), y_hat.astype(np.float32))


@pytest.mark.parametrize("num_samples", [2, 10, 200])
def test_fresh_test_set_is_balanced(num_samples: int) -> None:
    test = fresh_test_set(3, signal_vector(20, 1.5), 1.0, 0.0, num_samples)
    true = test.true_labels.numpy()
    assert len(test) == num_samples
    assert int((true == 1).sum()) == num_samples // 2
    assert int((true == -1).sum()) == num_samples // 2


def test_balanced_labels_exact_counts_and_shuffled() -> None:
    labels = balanced_labels(100, np.random.default_rng(0))
    assert sorted(labels.tolist()) == [-1] * 50 + [1] * 50
    assert labels[:50].sum() != 50  # shuffled, not sorted blocks


def test_fresh_test_set_is_deterministic_per_seed() -> None:
    mu = signal_vector(20, 1.5)
    a = fresh_test_set(4, mu, 1.0, 0.1, 100)
    b = fresh_test_set(4, mu, 1.0, 0.1, 100)
    c = fresh_test_set(5, mu, 1.0, 0.1, 100)
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.true_labels, b.true_labels)
    assert not torch.equal(a.noise, c.noise)
    assert not torch.equal(a.true_labels, c.true_labels)


def test_source_set_is_deterministic_and_independent_of_test_set() -> None:
    mu = signal_vector(50, 1.5)
    source = source_set(0, mu, 1.0, 0.0, 400)
    again = source_set(0, mu, 1.0, 0.0, 400)
    test = fresh_test_set(0, mu, 1.0, 0.0, 400)
    assert torch.equal(source.features, again.features)
    assert int((source.true_labels == 1).sum()) == 200
    torch.testing.assert_close(source.labels, source.true_labels, rtol=0, atol=0)  # no label noise
    # Same seed, different stream: not the same draws (float32 values may coincide by chance
    # only rarely), and empirically uncorrelated.
    s, t = source.noise.double().numpy()[:, 1:], test.noise.double().numpy()[:, 1:]
    assert np.isin(s, t).mean() < 1e-3
    assert not np.any(s == t)
    correlation = np.corrcoef(s.ravel(), t.ravel())[0, 1]
    assert abs(correlation) < 0.02  # 400 * 49 pairs: std ~ 0.007
    # Another source seed gives another source set.
    assert not torch.equal(source.noise, source_set(1, mu, 1.0, 0.0, 400).noise)
