"""Aligned/misaligned filters and the signal-noise decomposition, as pure tensor functions.

Definition 1: filter w_{j,r} is aligned when <w_{j,r}, j mu> > 0 (it fires on its own class's
signal) and misaligned otherwise. Proposition 1: w_{j,r}(t) = w_{j,r}(0) + j gamma mu/||mu||^2 +
sum_i rho_i xi_i/||xi_i||^2; since every xi is orthogonal to mu, gamma_{j,r}(t) =
j <w_{j,r}(t) - w_{j,r}(0), mu> exactly, and rho_{j,r,i} ~ <w_{j,r}(t) - w_{j,r}(0), xi_i> when the
xi are nearly orthogonal (d >> n). Weights are [2, m, d] with row 0 = class +1, row 1 = class -1.

"""

from __future__ import annotations

import torch

from initmatters_core.metrics import transition_table
from initmatters_core.tasks.synthetic.model import CLASS_SIGNS


def _class_signs(weight: torch.Tensor) -> torch.Tensor:
    return torch.tensor(CLASS_SIGNS, dtype=weight.dtype).reshape(2, 1)


def signal_response(weight: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """<w_{j,r}, j mu> for every filter, shape [2, m]."""
    return _class_signs(weight) * (weight @ signal.to(weight.dtype))


def aligned_mask(weight: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Boolean [2, m]: True where the filter is aligned (<w_{j,r}, j mu> > 0)."""
    return signal_response(weight, signal) > 0


def alignment_counts(weight: torch.Tensor, signal: torch.Tensor) -> dict[str, int]:
    """Aligned and misaligned counts, in all and per class (pos = class +1, neg = class -1)."""
    aligned = aligned_mask(weight, signal)
    m = int(aligned.shape[1])
    pos, neg = int(aligned[0].sum()), int(aligned[1].sum())
    return {
        "aligned": pos + neg,
        "misaligned": 2 * m - pos - neg,
        "aligned_pos": pos,
        "misaligned_pos": m - pos,
        "aligned_neg": neg,
        "misaligned_neg": m - neg,
    }


def transition_counts(init_weight: torch.Tensor, weight: torch.Tensor, signal: torch.Tensor) -> dict[str, int]:
    """The 2 x 2 table 'aligned at init' x 'aligned now', over all 2m filters."""
    return transition_table(aligned_mask(init_weight, signal), aligned_mask(weight, signal))


def signal_learning(init_weight: torch.Tensor, weight: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """gamma_{j,r} = j <w_{j,r}(t) - w_{j,r}(0), mu>, shape [2, m] (Proposition 1)."""
    return signal_response(weight - init_weight, signal)


def signal_learning_summary(
    init_weight: torch.Tensor, weight: torch.Tensor, signal: torch.Tensor
) -> dict[str, float]:
    """Mean gamma over the filters aligned at init and over those misaligned at init (NaN if none)."""
    gamma = signal_learning(init_weight, weight, signal)
    at_init = aligned_mask(init_weight, signal)
    return {
        "gamma_aligned_init_mean": _masked_mean(gamma, at_init),
        "gamma_misaligned_init_mean": _masked_mean(gamma, ~at_init),
    }


def noise_memorization(init_weight: torch.Tensor, weight: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """rho_{j,r,i} ~ <w_{j,r}(t) - w_{j,r}(0), xi_i>, shape [2, m, n] for noise [n, d]."""
    return (weight - init_weight) @ noise.to(weight.dtype).T


def noise_memorization_summary(
    init_weight: torch.Tensor, weight: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Mean rho over (filter, example) pairs with j = y_i ('same') and with j != y_i ('other').

    Kou et al.'s bar-rho (j = y_i, grows with memorization) and underline-rho (j != y_i, stays
    small and negative). Labels are the observed ones, which drive the gradient.
    """
    rho = noise_memorization(init_weight, weight, noise)
    same = _class_signs(weight).reshape(2, 1, 1) == labels.to(weight.dtype).reshape(1, 1, -1)
    same = same.expand_as(rho)
    return {"rho_same_mean": _masked_mean(rho, same), "rho_other_mean": _masked_mean(rho, ~same)}


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    count = int(mask.sum())
    return float(values[mask].sum() / count) if count else float("nan")


def alignment_report(init_weight: torch.Tensor, weight: torch.Tensor, signal: torch.Tensor) -> dict[str, float]:
    """All server-side alignment metrics of `weight` relative to the initial model."""
    return {
        **alignment_counts(weight, signal),
        **transition_counts(init_weight, weight, signal),
        **signal_learning_summary(init_weight, weight, signal),
    }
