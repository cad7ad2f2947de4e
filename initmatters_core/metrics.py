"""Model metrics every task shares: the init x now alignment table and the clients' update diversity.

Update diversity (any model, the project's addition as FL pre-training studies report it): the
mean pairwise cosine similarity of the clients' flattened updates w_k - w_global in a round
(1 = all clients pushed the same way; near 0 = unrelated updates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

RUNNING_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
TRANSITION_KEYS = (  # the 'aligned at init' x 'aligned now' table, in rounds.csv order
    "misaligned_init_aligned_now",
    "misaligned_init_misaligned_now",
    "aligned_init_aligned_now",
    "aligned_init_misaligned_now",
)


def transition_table(at_init: torch.Tensor, now: torch.Tensor) -> dict[str, int]:
    """Counts of the 2 x 2 table from boolean 'aligned' masks at init and now (any shape, any model)."""
    cells = (~at_init & now, ~at_init & ~now, at_init & now, at_init & ~now)
    return {key: int(cell.sum()) for key, cell in zip(TRANSITION_KEYS, cells, strict=True)}


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
