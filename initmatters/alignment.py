"""Aligned/misaligned filters and the signal-noise decomposition, as pure tensor functions.

Definition 1: filter w_{j,r} is aligned when <w_{j,r}, j mu> > 0 (it fires on its own class's
signal) and misaligned otherwise. Proposition 1: w_{j,r}(t) = w_{j,r}(0) + j gamma mu/||mu||^2 +
sum_i rho_i xi_i/||xi_i||^2; since every xi is orthogonal to mu, gamma_{j,r}(t) =
j <w_{j,r}(t) - w_{j,r}(0), mu> exactly, and rho_{j,r,i} ~ <w_{j,r}(t) - w_{j,r}(0), xi_i> when the
xi are nearly orthogonal (d >> n). Weights are [2, m, d] with row 0 = class +1, row 1 = class -1.

Update diversity (any model, the project's addition as FL pre-training studies report it): the
mean pairwise cosine similarity of the clients' flattened updates w_k - w_global in a round
(1 = all clients pushed the same way; near 0 = unrelated updates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from initmatters.model import CLASS_SIGNS

RUNNING_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
TRANSITION_KEYS = (  # the 'aligned at init' x 'aligned now' table, in rounds.csv order
    "misaligned_init_aligned_now",
    "misaligned_init_misaligned_now",
    "aligned_init_aligned_now",
    "aligned_init_misaligned_now",
)


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


def transition_table(at_init: torch.Tensor, now: torch.Tensor) -> dict[str, int]:
    """Counts of the 2 x 2 table from boolean 'aligned' masks at init and now (any shape, any model)."""
    cells = (~at_init & now, ~at_init & ~now, at_init & now, at_init & ~now)
    return {key: int(cell.sum()) for key, cell in zip(TRANSITION_KEYS, cells, strict=True)}


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


def flat_update(
    local: Mapping[str, torch.Tensor], global_: Mapping[str, torch.Tensor], *, skip_running_stats: bool = True
) -> torch.Tensor:
    """w_k - w_global flattened over the floating-point tensors (sorted by name), float32 on CPU.

    BatchNorm running statistics are left out by default: they are not trained weights.
    """
    keys = sorted(key for key, value in global_.items() if torch.is_tensor(value) and value.is_floating_point())
    if skip_running_stats:
        keys = [key for key in keys if not key.endswith(RUNNING_STAT_SUFFIXES)]
    if not keys:
        return torch.zeros(0)
    return torch.cat([
        (torch.as_tensor(local[key]).detach().to("cpu", torch.float32)
         - torch.as_tensor(global_[key]).detach().to("cpu", torch.float32)).reshape(-1)
        for key in keys
    ])


def update_diversity(client_updates: Sequence[torch.Tensor] | Iterable[torch.Tensor]) -> float:
    """Mean pairwise cosine similarity of flattened client updates (NaN with fewer than 2).

    Pairwise, without stacking (a ResNet18 update is 11M numbers). A zero update has cosine 0
    with every other update.
    """
    updates = [torch.as_tensor(update).detach().reshape(-1) for update in client_updates]
    if len(updates) < 2:
        return float("nan")
    norms = [float(update.norm()) for update in updates]
    total, pairs = 0.0, 0
    for i in range(len(updates)):
        for j in range(i + 1, len(updates)):
            if norms[i] > 0 and norms[j] > 0:
                total += float(torch.dot(updates[i], updates[j])) / (norms[i] * norms[j])
            pairs += 1
    return total / pairs
