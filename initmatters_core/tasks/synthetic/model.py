"""The paper's two-layer ReLU CNN and its logistic loss.

f(W, x) = F_{+1}(W_{+1}, x) - F_{-1}(W_{-1}, x),
F_j(W_j, x) = (1/m) sum_r [ReLU(<w_{j,r}, x1>) + ReLU(<w_{j,r}, x2>)].
The second layer (+-1/m) is fixed; the only parameter is `weight`, shape [2, m, d], row 0 the
class +1 filters and row 1 the class -1 filters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

WEIGHT_KEY = "weight"
# j for row 0 and row 1 of the weight: the class whose signal each filter bank should detect.
CLASS_SIGNS = (1.0, -1.0)


class TwoLayerReluCNN(nn.Module):
    """f(W, x) for inputs of shape [n, patches, d]; returns the scalar margin f, shape [n]."""

    def __init__(self, dim: int, filters_per_class: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, filters_per_class, dim))

    @property
    def filters_per_class(self) -> int:
        return int(self.weight.shape[1])

    def class_scores(self, features: torch.Tensor) -> torch.Tensor:
        """[F_{+1}, F_{-1}] per example, shape [n, 2]."""
        n, patches, dim = features.shape
        filters = self.weight.reshape(-1, dim)  # [2m, d]
        activations = functional.relu(features.reshape(n * patches, dim) @ filters.T)
        per_filter = activations.reshape(n, patches, 2, self.filters_per_class).sum(dim=1)
        return per_filter.mean(dim=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.class_scores(features)
        return scores[:, 0] - scores[:, 1]


def logistic_loss(margins: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of l(y f) with l(z) = log(1 + exp(-z)), computed stably as softplus(-z)."""
    return functional.softplus(-labels * margins).mean()


def classification_error(margins: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of examples with y f(x) <= 0 (a zero margin counts as an error)."""
    return float((labels * margins <= 0).double().mean())


def model_from_weight(weight: torch.Tensor) -> TwoLayerReluCNN:
    """A model holding a copy of `weight` ([2, m, d])."""
    if weight.dim() != 3 or weight.shape[0] != 2:
        raise ValueError(f"weight must have shape [2, m, d], got {list(weight.shape)}")
    model = TwoLayerReluCNN(dim=int(weight.shape[2]), filters_per_class=int(weight.shape[1]))
    with torch.no_grad():
        model.weight.copy_(weight)
    return model
