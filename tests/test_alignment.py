"""Aligned/misaligned filters (Definition 1) and the signal-noise decomposition (Proposition 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from initmatters_core.tasks.synthetic.alignment import (
    aligned_mask,
    alignment_counts,
    alignment_report,
    noise_memorization,
    noise_memorization_summary,
    signal_learning,
    signal_learning_summary,
    transition_counts,
)
from initmatters_core.tasks.synthetic.data import sample_examples, signal_vector
from initmatters_core.tasks.synthetic.initialization import random_weight
from initmatters_core.tasks.synthetic.model import logistic_loss, model_from_weight
from initmatters_core.training import train_steps

SIGNS = (1.0, -1.0)  # j of row 0 (class +1) and row 1 (class -1)
SIGNS_T = torch.tensor(SIGNS, dtype=torch.float64).reshape(2, 1)


def _random_signal(dim: int, norm: float, seed: int) -> torch.Tensor:
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (norm * v / v.norm()).float()


def _brute_aligned(weight: torch.Tensor, mu: torch.Tensor) -> list[list[bool]]:
    w, u = weight.double().tolist(), mu.double().tolist()
    return [[SIGNS[j] * sum(a * b for a, b in zip(w[j][r], u, strict=True)) > 0 for r in range(len(w[j]))]
            for j in range(2)]


def test_alignment_counts_match_brute_force() -> None:
    mu = _random_signal(6, 1.5, seed=0)
    for seed in range(5):
        weight = torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(100 + seed))
        aligned = _brute_aligned(weight, mu)
        pos, neg = sum(aligned[0]), sum(aligned[1])
        assert alignment_counts(weight, mu) == {
            "aligned": pos + neg,
            "misaligned": 18 - pos - neg,
            "aligned_pos": pos,
            "misaligned_pos": 9 - pos,
            "aligned_neg": neg,
            "misaligned_neg": 9 - neg,
        }
        assert aligned_mask(weight, mu).tolist() == aligned


def test_alignment_uses_class_sign() -> None:
    mu = signal_vector(3, 2.0)
    # Row 0 (class +1) fires on +mu; row 1 (class -1) fires on -mu; a zero response is misaligned.
    weight = torch.tensor([[[1.0, 5.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                           [[1.0, 0.0, 0.0], [-0.1, 3.0, 0.0], [-2.0, 0.0, 0.0]]])
    assert aligned_mask(weight, mu).tolist() == [[True, False, False], [False, True, True]]
    assert alignment_counts(weight, mu)["misaligned_pos"] == 2
    assert alignment_counts(weight, mu)["misaligned_neg"] == 1


def test_transition_counts_match_brute_force() -> None:
    mu = _random_signal(5, 1.0, seed=1)
    gen = torch.Generator().manual_seed(7)
    init = torch.randn(2, 12, 5, generator=gen)
    now = init + 0.8 * torch.randn(2, 12, 5, generator=gen)
    before, after = _brute_aligned(init, mu), _brute_aligned(now, mu)
    table = {"misaligned_init_aligned_now": 0, "misaligned_init_misaligned_now": 0,
             "aligned_init_aligned_now": 0, "aligned_init_misaligned_now": 0}
    for j in range(2):
        for r in range(12):
            key = ("aligned" if before[j][r] else "misaligned") + "_init_" + \
                  ("aligned" if after[j][r] else "misaligned") + "_now"
            table[key] += 1
    got = transition_counts(init, now, mu)
    assert got == table
    assert sum(got.values()) == 24
    assert got["misaligned_init_aligned_now"] > 0 and got["aligned_init_misaligned_now"] > 0


def test_signal_learning_recovers_gamma_of_the_decomposition() -> None:
    d, m = 10, 6
    mu = _random_signal(d, 1.5, seed=2).double()
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(2, m, d, generator=gen, dtype=torch.float64)
    gamma = 3.0 * torch.randn(2, m, generator=gen, dtype=torch.float64)
    u = mu / mu.norm()
    orthogonal = torch.randn(2, m, d, generator=gen, dtype=torch.float64)
    orthogonal = orthogonal - (orthogonal @ u)[..., None] * u
    j = torch.tensor(SIGNS, dtype=torch.float64).reshape(2, 1, 1)
    weight = w0 + j * gamma[..., None] * mu / mu.norm() ** 2 + orthogonal
    got = signal_learning(w0.float(), weight.float(), mu.float())
    assert got.shape == (2, m)
    torch.testing.assert_close(got.double(), gamma, rtol=0, atol=1e-5)
    # float64 inputs: exact up to rounding.
    torch.testing.assert_close(signal_learning(w0, weight, mu), gamma, rtol=0, atol=1e-12)


def test_signal_learning_after_real_gradient_descent() -> None:
    d, m, n = 40, 5, 20
    mu = signal_vector(d, 1.5)
    rng = np.random.default_rng(4)
    data = sample_examples(rng.permutation([1, -1] * (n // 2)), mu, 1.0, 0.0, rng)
    w0 = random_weight(d, m, 0.1, torch.Generator().manual_seed(5))
    model = model_from_weight(w0)
    train_steps(model, data.features, data.labels, logistic_loss, steps=20, lr=0.5)
    w = model.weight.detach()

    delta = w.double().numpy() - w0.double().numpy()
    mu64 = mu.double().numpy()
    expected = np.array(SIGNS)[:, None] * (delta @ mu64)  # gamma_jr = j <w - w0, mu>
    got = signal_learning(w0, w, mu).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1  # training really learned signal

    # Proposition 1: w - w0 - j gamma mu/||mu||^2 lies in the span of the noise vectors xi_i.
    xi = data.noise.double().numpy()  # [n, d], n + 1 < d so this is a real constraint
    residual = delta - np.array(SIGNS)[:, None, None] * expected[..., None] * mu64 / (mu64 @ mu64)
    coefficients, *_ = np.linalg.lstsq(xi.T, residual.reshape(-1, d).T, rcond=None)
    outside_span = residual.reshape(-1, d).T - xi.T @ coefficients
    assert np.abs(outside_span).max() < 1e-5
    assert np.abs(residual).max() > 1e-2  # and the noise part is not trivially zero


def test_without_label_noise_filters_never_become_misaligned() -> None:
    # docs/science.md [derived]: with p = 0 the mu-component of every GD update is j * (non-negative),
    # so j <w_jr, mu> never decreases and an aligned filter stays aligned.
    d, m, n = 30, 25, 20
    mu = signal_vector(d, 1.5)
    rng = np.random.default_rng(6)
    data = sample_examples(rng.permutation([1, -1] * (n // 2)), mu, 1.0, 0.0, rng)
    w0 = random_weight(d, m, 0.1, torch.Generator().manual_seed(6))
    model = model_from_weight(w0)
    previous = SIGNS_T * (w0.double() @ mu.double())
    for _ in range(15):
        train_steps(model, data.features, data.labels, logistic_loss, steps=1, lr=0.1)
        current = SIGNS_T * (model.weight.detach().double() @ mu.double())
        assert (current - previous).min().item() >= -1e-6
        previous = current
    table = transition_counts(w0, model.weight.detach(), mu)
    assert table["aligned_init_misaligned_now"] == 0
    assert table["misaligned_init_aligned_now"] > 0  # some misaligned filters did flip


def test_signal_learning_summary_means_over_init_groups() -> None:
    mu = signal_vector(2, 1.0)
    init = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[-1.0, 0.0], [-1.0, 1.0]]])  # aligned: [[T, F], [T, T]]
    now = init + torch.tensor([[[0.5, 0.0], [2.0, 0.0]], [[-1.0, 0.0], [-3.0, 7.0]]])
    # gamma = j <delta, mu>: [[0.5, 2.0], [1.0, 3.0]]
    summary = signal_learning_summary(init, now, mu)
    assert summary["gamma_aligned_init_mean"] == pytest.approx((0.5 + 1.0 + 3.0) / 3)
    assert summary["gamma_misaligned_init_mean"] == pytest.approx(2.0)
    all_aligned = signal_learning_summary(init[:, :1], now[:, :1], mu)
    assert np.isnan(all_aligned["gamma_misaligned_init_mean"])


def test_noise_memorization_summary_hand_built() -> None:
    w0 = torch.zeros(2, 2, 3)
    w = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]],
                      [[3.0, -1.0, 0.0], [1.0, 1.0, 1.0]]])
    noise = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    labels = torch.tensor([1.0, -1.0, 1.0])
    # rho[j, r, i] = <w_jr, xi_i>:
    #   class +1: r0 -> [1, 2, 0], r1 -> [0, 1, 2]; class -1: r0 -> [3, -1, 0], r1 -> [1, 1, 2]
    rho = noise_memorization(w0, w, noise)
    assert rho.tolist() == [[[1.0, 2.0, 0.0], [0.0, 1.0, 2.0]], [[3.0, -1.0, 0.0], [1.0, 1.0, 2.0]]]
    # same (j = y_i): class +1 with i in {0, 2}: 1, 0, 0, 2; class -1 with i = 1: -1, 1
    # other: class +1 with i = 1: 2, 1; class -1 with i in {0, 2}: 3, 0, 1, 2
    summary = noise_memorization_summary(w0, w, noise, labels)
    assert summary["rho_same_mean"] == pytest.approx((1 + 0 + 0 + 2 - 1 + 1) / 6)
    assert summary["rho_other_mean"] == pytest.approx((2 + 1 + 3 + 0 + 1 + 2) / 6)
    # Relative to w(0): shifting both weights by the same tensor changes nothing.
    shift = torch.full_like(w, 0.7)
    assert noise_memorization_summary(w0 + shift, w + shift, noise, labels) == pytest.approx(summary)


def test_alignment_report_combines_counts_transitions_and_gamma() -> None:
    mu = signal_vector(2, 1.0)
    init = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[-1.0, 0.0], [-1.0, 1.0]]])  # aligned: [[T, F], [T, T]]
    now = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]], [[-2.0, 0.0], [-1.0, 1.0]]])  # aligned: [[F, T], [T, T]]
    report = alignment_report(init, now, mu)
    assert report == {
        "aligned": 3, "misaligned": 1,
        "aligned_pos": 1, "misaligned_pos": 1, "aligned_neg": 2, "misaligned_neg": 0,
        "misaligned_init_aligned_now": 1, "misaligned_init_misaligned_now": 0,
        "aligned_init_aligned_now": 2, "aligned_init_misaligned_now": 1,
        # gamma = j <now - init, mu> = [[-2, 2], [1, 0]]
        "gamma_aligned_init_mean": pytest.approx((-2.0 + 1.0 + 0.0) / 3),
        "gamma_misaligned_init_mean": pytest.approx(2.0),
    }


def test_random_init_is_about_half_misaligned() -> None:
    m = 500
    mu = signal_vector(20, 1.5)
    weight = random_weight(20, m, 0.1, torch.Generator().manual_seed(0))
    counts = alignment_counts(weight, mu)
    assert 0.4 * 2 * m <= counts["misaligned"] <= 0.6 * 2 * m
    for key in ("misaligned_pos", "misaligned_neg"):
        assert 0.4 * m <= counts[key] <= 0.6 * m
    # sigma_0 really is the init scale
    assert weight.std().item() == pytest.approx(0.1, rel=0.05)
