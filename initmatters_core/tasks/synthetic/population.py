"""Population test error and loss of the two-layer CNN, from draws of 2m Gaussians.

The network sees the noise patch xi ~ N(0, sigma_p^2 P), P = I - mu mu^T / ||mu||^2, only through
its 2m projections g = W xi (W the [2m, d] filter matrix), jointly Gaussian with covariance
sigma_p^2 W P W^T; the signal patch adds the deterministic ReLU(<w_jr, y_hat mu>). So with
g = L z, L L^T = sigma_p^2 W P W^T and z ~ N(0, I_2m), the margin of a test example with clean
label y_hat is, in distribution,

    f(y_hat, z) = c(y_hat) + h(z),   c(y_hat) = (1/m) sum_r s_r ReLU(y_hat <w_r, mu>),
                                     h(z) = (1/m) sum_r s_r ReLU((L z)_r),

s_r = +1 for the class +1 filters and -1 for the class -1 filters (the model's F_{+1} - F_{-1}).
Test labels are balanced, so each draw z scores both labels (half the mass each); the observed
label is y_hat flipped with probability p, and its expectation over the flip is taken exactly.
Means over N draws estimate the population values; each comes with the Monte-Carlo standard error
of the mean of the per-draw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from initmatters_core.seeding import Stream, numpy_rng
from initmatters_core.tasks.synthetic.model import CLASS_SIGNS

# Rows of draws per step: the [CHUNK_ROWS, 2m] product and the per-draw values stay a few MB.
CHUNK_ROWS = 2**15

# The metrics population_metrics returns, each also as <name>_se (its Monte-Carlo s.e.).
POPULATION_METRICS = ("pop_test_error", "pop_test_loss", "pop_test_error_observed", "pop_test_loss_observed")
POPULATION_COLUMNS = tuple(column for name in POPULATION_METRICS for column in (name, f"{name}_se"))


def population_draws(seed: int, num_samples: int, filters: int) -> torch.Tensor:
    """The run's standard-normal draws z, [num_samples, filters] float32, from Stream.POPULATION.

    Drawn once per run and reused every round (common random numbers), so round-to-round
    differences of the estimates are nearly free of Monte-Carlo noise."""
    rng = numpy_rng(seed, Stream.POPULATION)
    return torch.from_numpy(rng.standard_normal((num_samples, filters), dtype=np.float32))


def noise_factor(weight: torch.Tensor, signal: torch.Tensor, noise_std: float) -> torch.Tensor:
    """L, [2m, 2m] float64, with L L^T = sigma_p^2 W P W^T (eigendecomposition clipped at 0: the
    covariance is rank-deficient when filters are collinear or parallel to mu)."""
    filters = weight.reshape(-1, weight.shape[-1]).double()
    direction = signal.double() / torch.linalg.vector_norm(signal.double())
    projected = filters - torch.outer(filters @ direction, direction)  # W P (P is symmetric, idempotent)
    covariance = noise_std**2 * (projected @ projected.T)
    values, vectors = torch.linalg.eigh(covariance)
    return vectors * values.clamp(min=0.0).sqrt()


def filter_signs(filters_per_class: int, dtype: torch.dtype) -> torch.Tensor:
    """s_r / m for the 2m filters: +1/m for the class +1 bank, -1/m for the class -1 bank."""
    return torch.tensor(CLASS_SIGNS, dtype=dtype).repeat_interleave(filters_per_class) / filters_per_class


@dataclass(frozen=True)
class MarginLaw:
    """The margin's law for one weight: f(y_hat, z) = shift(y_hat) + h(z), h(z) = signs . ReLU(L z)."""

    factor_t: torch.Tensor  # L^T, [2m, 2m] in the draws' dtype
    signs: torch.Tensor  # s_r / m, [2m] in the draws' dtype
    shift_pos: float  # c(+1)
    shift_neg: float  # c(-1)

    def margins(self, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(+1, z), f(-1, z)) for each draw z (rows of `draws`), [N] each in the draws' dtype."""
        noise_part = (draws @ self.factor_t).relu_() @ self.signs
        return noise_part + self.shift_pos, noise_part + self.shift_neg


def margin_law(weight: torch.Tensor, signal: torch.Tensor, noise_std: float, dtype: torch.dtype) -> MarginLaw:
    """The law of the model's margin on a fresh test example, for draws of `dtype`."""
    weight = weight.detach().cpu()
    filters_per_class = int(weight.shape[1])
    signal_projection = weight.reshape(-1, weight.shape[-1]).double() @ signal.double()
    signs64 = filter_signs(filters_per_class, torch.float64)
    shift_pos, shift_neg = (float(functional.relu(y_hat * signal_projection) @ signs64) for y_hat in (1.0, -1.0))
    return MarginLaw(
        factor_t=noise_factor(weight, signal, noise_std).to(dtype).T.contiguous(),
        signs=filter_signs(filters_per_class, dtype),
        shift_pos=shift_pos,
        shift_neg=shift_neg,
    )


def _per_draw_values(positive: torch.Tensor, negative: torch.Tensor, label_noise: float) -> torch.Tensor:
    """[4, n]: each metric of POPULATION_METRICS per draw, summed over y_hat = +1 (y f = positive)
    and y_hat = -1 (y f = -negative); halved by the caller, as each label has half the mass."""
    dtype = positive.dtype
    errors = (positive <= 0).to(dtype) + (negative >= 0).to(dtype)
    flipped_errors = (positive >= 0).to(dtype) + (negative <= 0).to(dtype)
    losses = functional.softplus(-positive) + functional.softplus(negative)
    # softplus(z) = softplus(-z) + z: the flipped labels' losses are losses + positive - negative.
    observed_losses = losses + label_noise * (positive - negative)
    observed_errors = (1.0 - label_noise) * errors + label_noise * flipped_errors
    return torch.stack([errors, losses, observed_errors, observed_losses])


def population_metrics(
    weight: torch.Tensor, signal: torch.Tensor, noise_std: float, label_noise: float, draws: torch.Tensor
) -> dict[str, float]:
    """Population test error and logistic loss on clean labels y_hat and on observed labels
    (flipped with probability p: error_obs = (1-p) P(y_hat f <= 0) + p P(-y_hat f <= 0), the loss
    likewise), each with its Monte-Carlo s.e. (sample s.d. of the per-draw values / sqrt(N)).
    A zero margin counts as an error. The draws are processed in chunks of CHUNK_ROWS, with float64
    sums of the values and their squares: no [N]-sized intermediate, so the per-round cost stays
    small."""
    law = margin_law(weight, signal, noise_std, draws.dtype)
    sums = torch.zeros(2, len(POPULATION_METRICS), dtype=torch.float64)
    for chunk in draws.split(CHUNK_ROWS):
        values = _per_draw_values(*law.margins(chunk), label_noise).double()
        sums[0] += values.sum(dim=1)
        sums[1] += values.square().sum(dim=1)
    n = draws.shape[0]
    means = sums[0] / n
    variances = ((sums[1] - n * means**2) / max(n - 1, 1)).clamp(min=0.0)
    metrics: dict[str, float] = {}
    for name, mean, variance in zip(POPULATION_METRICS, means.tolist(), variances.tolist(), strict=True):
        metrics[name], metrics[f"{name}_se"] = 0.5 * mean, 0.5 * (variance / n) ** 0.5
    return metrics
