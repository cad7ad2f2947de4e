"""The project's one local training loop, used by clients and by server-side pre-training."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_steps(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn,
    *,
    steps: int,
    lr: float,
    batch_size: int = 0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """Run `steps` (S)GD steps on (features, labels) in place and return the final loss.

    batch_size = 0 is full-batch gradient descent, W <- W - lr * grad L(W), the paper's local
    update; batch_size > 0 draws each mini-batch without replacement from `generator`. The
    returned loss is the full-data loss of the model after the last step.

    Without momentum and weight decay the update is applied directly as `W.add_(grad,
    alpha=-lr)`, the very operation torch.optim.SGD performs on CPU tensors (bit-identical), so
    the client process neither builds an optimizer every round nor imports what torch.optim
    pulls in on first use (torch._dynamo, ~150 MB per process).
    """
    params = list(model.parameters())
    optimizer = None
    if momentum != 0.0 or weight_decay != 0.0:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    num_samples = int(labels.shape[0])
    full_batch = batch_size <= 0 or batch_size >= num_samples
    model.train()
    for _ in range(steps):
        if full_batch:
            batch_x, batch_y = features, labels
        else:
            index = torch.randperm(num_samples, generator=generator)[:batch_size]
            batch_x, batch_y = features[index], labels[index]
        for param in params:
            param.grad = None
        loss_fn(model(batch_x), batch_y).backward()
        if optimizer is not None:
            optimizer.step()
            continue
        with torch.no_grad():
            for param in params:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-lr)
    return evaluate_loss(model, features, labels, loss_fn)


@torch.no_grad()
def evaluate_loss(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn) -> float:
    """Loss of `model` on the whole of (features, labels)."""
    model.eval()
    return float(loss_fn(model(features), labels))
