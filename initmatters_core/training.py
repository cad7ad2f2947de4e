"""The project's one local training loop, used by clients and by server-side pre-training."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BatchTransform = Callable[[torch.Tensor], torch.Tensor]


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
    proximal_mu: float = 0.0,
    generator: torch.Generator | None = None,
    transform: BatchTransform | None = None,
    device: torch.device | str | None = None,
    eval_batch_size: int = 0,
) -> float:
    """Run `steps` (S)GD steps on (features, labels) in place and return the final loss.

    batch_size = 0 (or >= n) is full-batch gradient descent, W <- W - lr * grad L(W), the
    paper's local update. batch_size > 0 is mini-batch SGD over epochs: each epoch is a fresh
    permutation of the n examples drawn from `generator`, cut into consecutive batches of
    `batch_size` (the last one holds n mod batch_size when that is not 0), so ceil(n /
    batch_size) steps make one epoch.

    proximal_mu: FedProx's proximal term: (mu / 2) ||w - w_start||^2 is added to every step's
    loss, w_start being the model this call started from (the round's global model); 0 = none.
    transform: applied to every training batch (e.g. augmentation), never to the final loss.
    device: where the model and the batches live during training (the model is moved there;
    the data stay where they are and batches are copied); None = the model's own device.
    eval_batch_size: examples per forward pass of the final loss (0 = all at once); the loss is
    the mean over all n examples either way, in eval mode and without the transform.

    Without momentum and weight decay the update is applied directly as `W.add_(grad,
    alpha=-lr)`, the very operation torch.optim.SGD performs (bit-identical), so the client
    process neither builds an optimizer every round nor imports what torch.optim pulls in on
    first use (torch._dynamo, ~150 MB per process).
    """
    if device is not None:
        model.to(device)
    target = next(model.parameters()).device
    params = list(model.parameters())
    anchors = [param.detach().clone() for param in params] if proximal_mu else None
    optimizer = None
    if momentum != 0.0 or weight_decay != 0.0:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    num_samples = int(labels.shape[0])
    full_batch = batch_size <= 0 or batch_size >= num_samples
    batches = None if full_batch else epoch_batches(num_samples, batch_size, generator)
    model.train()
    for _ in range(steps):
        if batches is None:
            batch_x, batch_y = features, labels
        else:
            index = next(batches)
            batch_x, batch_y = features[index], labels[index]
        batch_x, batch_y = batch_x.to(target, non_blocking=True), batch_y.to(target, non_blocking=True)
        if transform is not None:
            batch_x = transform(batch_x)
        for param in params:
            param.grad = None
        loss = loss_fn(model(batch_x), batch_y)
        if anchors is not None:
            distance = sum((param - anchor).pow(2).sum() for param, anchor in zip(params, anchors, strict=True))
            loss = loss + 0.5 * proximal_mu * distance
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            continue
        with torch.no_grad():
            for param in params:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-lr)
    return evaluate_loss(model, features, labels, loss_fn, batch_size=eval_batch_size)


def epoch_batches(num_samples: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Endless mini-batch indices: consecutive slices of a fresh permutation per epoch."""
    while True:
        order = torch.randperm(num_samples, generator=generator)
        yield from torch.split(order, batch_size)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """ceil(n / batch_size) steps make one pass over n examples (1 for full-batch GD)."""
    if batch_size <= 0 or batch_size >= num_samples:
        return 1
    return -(-num_samples // batch_size)


def local_step_count(local_steps: int, local_epochs: int, num_examples: int, batch_size: int) -> int:
    """A client's steps per round: local_epochs passes of ceil(n / batch_size) steps when
    local_epochs > 0 (fl.local_epochs), else local_steps (fl.local_steps)."""
    if local_epochs > 0:
        return local_epochs * steps_per_epoch(num_examples, batch_size)
    return local_steps


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn, *, batch_size: int = 0
) -> float:
    """Mean loss of `model` (eval mode) over all of (features, labels), `batch_size` at a time.

    loss_fn must return a mean over its batch; chunks are weighted by their size.
    """
    model.eval()
    target = next(model.parameters()).device
    num_samples = int(labels.shape[0])
    if batch_size <= 0 or batch_size >= num_samples:
        return float(loss_fn(model(features.to(target)), labels.to(target)))
    total = 0.0
    for start in range(0, num_samples, batch_size):
        chunk_x = features[start:start + batch_size].to(target)
        chunk_y = labels[start:start + batch_size].to(target)
        total += float(loss_fn(model(chunk_x), chunk_y)) * int(chunk_y.shape[0])
    return total / num_samples
