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

import numpy as np
import torch
from torch.nn import functional

from initmatters_core.seeding import Stream, numpy_rng
from initmatters_core.tasks.synthetic.model import CLASS_SIGNS

# Rows of draws per matrix product: [CHUNK_ROWS, 2m] float32 stays a few MB (cache-friendly).
CHUNK_ROWS = 2**13

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


def population_margins(
    weight: torch.Tensor, signal: torch.Tensor, noise_std: float, draws: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(+1, z), f(-1, z)) for each draw z, two tensors [N] in the draws' dtype: the model's
    margin on a test example of clean label +1 and -1 whose noise projections are L z."""
    weight = weight.detach().cpu()
    filters_per_class = int(weight.shape[1])
    factor = noise_factor(weight, signal, noise_std).to(draws.dtype).T
    signs = filter_signs(filters_per_class, draws.dtype)
    noise_part = torch.cat([(chunk @ factor).relu_() @ signs for chunk in draws.split(CHUNK_ROWS)])
    signal_projection = weight.reshape(-1, weight.shape[-1]).double() @ signal.double()
    signs64 = filter_signs(filters_per_class, torch.float64)
    shifts = [float(functional.relu(y_hat * signal_projection) @ signs64) for y_hat in (1.0, -1.0)]
    return noise_part + shifts[0], noise_part + shifts[1]


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean of the per-draw values and its standard error (sample s.d. / sqrt(N); 0 for N = 1),
    accumulated in float64."""
    values, n = values.double(), values.numel()
    se = float(values.std()) / n**0.5 if n > 1 else 0.0
    return float(values.mean()), se


def population_metrics(
    weight: torch.Tensor, signal: torch.Tensor, noise_std: float, label_noise: float, draws: torch.Tensor
) -> dict[str, float]:
    """Population test error and logistic loss on clean labels y_hat and on observed labels
    (flipped with probability p: error_obs = (1-p) P(y_hat f <= 0) + p P(-y_hat f <= 0), the loss
    likewise), each with its Monte-Carlo s.e. A zero margin counts as an error."""
    positive, negative = population_margins(weight, signal, noise_std, draws)
    # Per draw, half the mass on y_hat = +1 (margin y f = positive) and half on -1 (y f = -negative).
    dtype = positive.dtype
    error = 0.5 * ((positive <= 0).to(dtype) + (negative >= 0).to(dtype))
    error_flipped = 0.5 * ((positive >= 0).to(dtype) + (negative <= 0).to(dtype))
    loss = 0.5 * (functional.softplus(-positive) + functional.softplus(negative))
    # softplus(x) = softplus(-x) + x: the flipped-label loss without two more softplus passes.
    loss_flipped = loss + 0.5 * (positive - negative)
    per_draw = {
        "pop_test_error": error,
        "pop_test_loss": loss,
        "pop_test_error_observed": (1.0 - label_noise) * error + label_noise * error_flipped,
        "pop_test_loss_observed": (1.0 - label_noise) * loss + label_noise * loss_flipped,
    }
    metrics: dict[str, float] = {}
    for name in POPULATION_METRICS:
        metrics[name], metrics[f"{name}_se"] = _mean_and_se(per_draw[name])
    return metrics
