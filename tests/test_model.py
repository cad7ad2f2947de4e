"""The two-layer ReLU CNN, its loss and the local training loop (docs/science.md, "Network")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from initmatters_core.tasks.synthetic.model import (
    TwoLayerReluCNN,
    classification_error,
    logistic_loss,
    model_from_weight,
)
from initmatters_core.training import epoch_batches, evaluate_loss, steps_per_epoch, train_steps


def _relu(z: float) -> float:
    return z if z > 0 else 0.0


def _hand_forward(weight: list, example: list) -> tuple[float, float, float]:
    """(F_+1, F_-1, f) by the paper's formula, with explicit loops over r and patches."""
    m = len(weight[0])
    scores = []
    for j in range(2):
        total = 0.0
        for r in range(m):
            for patch in example:
                total += _relu(sum(w * x for w, x in zip(weight[j][r], patch, strict=True)))
        scores.append(total / m)
    return scores[0], scores[1], scores[0] - scores[1]


def _tiny_problem(seed: int = 0, n: int = 5, m: int = 2, d: int = 3):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(2, m, d, generator=gen)
    features = torch.randn(n, 2, d, generator=gen)
    labels = torch.tensor([1.0, -1.0] * (n // 2) + [1.0] * (n % 2))
    return weight, features, labels


def test_forward_matches_hand_computation() -> None:
    weight, features, _ = _tiny_problem(n=6)
    model = model_from_weight(weight)
    assert model.filters_per_class == 2
    margins = model(features)
    scores = model.class_scores(features)
    w, x = weight.double().tolist(), features.double().tolist()
    for i in range(features.shape[0]):
        f_pos, f_neg, f = _hand_forward(w, x[i])
        assert scores[i, 0].item() == pytest.approx(f_pos, abs=1e-6)
        assert scores[i, 1].item() == pytest.approx(f_neg, abs=1e-6)
        assert margins[i].item() == pytest.approx(f, abs=1e-6)


def test_forward_on_a_hand_picked_example() -> None:
    # d = 3, m = 2: every number below is worked out by hand.
    weight = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]],
                           [[-1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])
    x = torch.tensor([[[2.0, 1.0, 0.0], [0.0, -1.0, 3.0]]])
    # F_+1 = ([2]_+ + [0]_+ + [1]_+ + [-4]_+) / 2 = 1.5; F_-1 = ([-2]_+ + [0]_+ + [0]_+ + [6]_+) / 2 = 3
    model = model_from_weight(weight)
    torch.testing.assert_close(model.class_scores(x), torch.tensor([[1.5, 3.0]]))
    torch.testing.assert_close(model(x), torch.tensor([-1.5]))


def test_patch_order_does_not_matter() -> None:
    weight, features, _ = _tiny_problem(n=4, m=3, d=5)
    model = model_from_weight(weight)
    torch.testing.assert_close(model(features), model(features.flip(1)))


def test_model_from_weight_copies_and_checks_shape() -> None:
    weight = torch.ones(2, 3, 4)
    model = model_from_weight(weight)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert torch.equal(weight, torch.ones(2, 3, 4))
    for bad in (torch.zeros(3, 3, 4), torch.zeros(2, 3)):
        with pytest.raises(ValueError):
            model_from_weight(bad)
    assert [p.shape for p in TwoLayerReluCNN(4, 3).parameters()] == [torch.Size([2, 3, 4])]


def test_logistic_loss_matches_numpy_float64() -> None:
    margins = np.array([-6.0, -1.25, 0.0, 0.3, 2.0, 7.5])
    labels = np.array([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    expected = np.mean(np.log(1.0 + np.exp(-labels * margins)))
    got = logistic_loss(torch.tensor(margins, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_logistic_loss_is_stable_for_large_margins() -> None:
    got = logistic_loss(torch.tensor([200.0, -200.0]), torch.tensor([-1.0, -1.0]))
    # l(-200) = 200 + log(1 + e^-200), l(200) ~ e^-200: mean ~ 100
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(100.0, rel=1e-6)


def test_classification_error_counts_non_positive_margins() -> None:
    margins = torch.tensor([1.0, -1.0, 0.0, 2.0, -0.5, 0.0])
    labels = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    # y f = [1, -1, 0, -2, 0.5, 0]: errors at positions 1, 2, 3, 5
    assert classification_error(margins, labels) == pytest.approx(4 / 6)
    assert classification_error(torch.tensor([3.0]), torch.tensor([1.0])) == 0.0


def _reference_loss(weight: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The network and loss written independently (einsum, float64, log1p(exp))."""
    pre = torch.einsum("npd,jrd->npjr", features, weight)
    scores = torch.relu(pre).sum(dim=1).mean(dim=2)  # [n, 2]
    margins = scores[:, 0] - scores[:, 1]
    return torch.log1p(torch.exp(-labels * margins)).mean()


def _analytic_gradient(weight: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """dL/dw_jr = (1/n) sum_i l'(y_i f_i) y_i j (1/m) sum_p 1[<w_jr, x_ip> > 0] x_ip."""
    _, m, _ = weight.shape
    pre = np.einsum("npd,jrd->npjr", features, weight)
    margins = np.maximum(pre, 0).sum(axis=1).mean(axis=2) @ np.array([1.0, -1.0])
    dloss = -1.0 / (1.0 + np.exp(labels * margins))  # l'(z) = -1 / (1 + e^z)
    grad = np.zeros_like(weight)
    for j, sign in enumerate((1.0, -1.0)):
        for r in range(m):
            active = (pre[:, :, j, r] > 0).astype(np.float64)  # [n, patches]
            per_example = np.einsum("np,npd->nd", active, features)
            grad[j, r] = np.mean((dloss * labels * sign)[:, None] * per_example, axis=0) / m
    return grad


def test_one_full_batch_step_is_gradient_descent() -> None:
    weight, features, labels = _tiny_problem(seed=3, n=7, m=2, d=3)
    lr = 0.3
    reference = weight.double().clone().requires_grad_(True)
    _reference_loss(reference, features.double(), labels.double()).backward()
    expected = weight.double() - lr * reference.grad
    analytic = _analytic_gradient(weight.double().numpy(), features.double().numpy(), labels.double().numpy())
    np.testing.assert_allclose(reference.grad.numpy(), analytic, atol=1e-10)
    assert np.abs(analytic).max() > 1e-2  # a step that really moves the weights

    model = model_from_weight(weight)
    final_loss = train_steps(model, features, labels, logistic_loss, steps=1, lr=lr)
    torch.testing.assert_close(model.weight.detach().double(), expected, rtol=0, atol=1e-6)
    # The returned loss is the full-data loss after the step.
    after = _reference_loss(expected, features.double(), labels.double()).item()
    assert final_loss == pytest.approx(after, abs=1e-6)


def test_several_full_batch_steps_match_manual_loop() -> None:
    weight, features, labels = _tiny_problem(seed=5, n=8, m=3, d=4)
    lr, steps = 0.5, 4
    w = weight.double().numpy()
    for _ in range(steps):
        w = w - lr * _analytic_gradient(w, features.double().numpy(), labels.double().numpy())
    model = model_from_weight(weight)
    train_steps(model, features, labels, logistic_loss, steps=steps, lr=lr, batch_size=0)
    np.testing.assert_allclose(model.weight.detach().double().numpy(), w, atol=1e-5)
    # batch_size >= n is full-batch too.
    model_big = model_from_weight(weight)
    train_steps(model_big, features, labels, logistic_loss, steps=steps, lr=lr, batch_size=8)
    torch.testing.assert_close(model_big.weight, model.weight, rtol=0, atol=0)


def test_mini_batch_is_reproducible_and_uses_the_generator() -> None:
    weight, features, labels = _tiny_problem(seed=1, n=10, m=2, d=3)

    def run(seed: int) -> torch.Tensor:
        model = model_from_weight(weight)
        train_steps(model, features, labels, logistic_loss, steps=5, lr=0.4, batch_size=3,
                    generator=torch.Generator().manual_seed(seed))
        return model.weight.detach().clone()

    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_mini_batch_step_is_gradient_descent_on_the_drawn_batch() -> None:
    weight, features, labels = _tiny_problem(seed=2, n=10, m=2, d=3)
    lr, batch = 0.4, 4
    # Reproduce the batches independently: epochs of torch.randperm(n) cut into slices of b
    # (4, 4, 2 per epoch), drawn from the same seeded generator; 5 steps cross an epoch.
    gen = torch.Generator().manual_seed(21)
    batches = []
    while len(batches) < 5:
        order = torch.randperm(10, generator=gen).numpy()
        batches += [order[0:4], order[4:8], order[8:10]]
    w = weight.double().numpy()
    for index in batches[:5]:
        w = w - lr * _analytic_gradient(w, features.double().numpy()[index], labels.double().numpy()[index])
    model = model_from_weight(weight)
    train_steps(model, features, labels, logistic_loss, steps=5, lr=lr, batch_size=batch,
                generator=torch.Generator().manual_seed(21))
    np.testing.assert_allclose(model.weight.detach().double().numpy(), w, atol=1e-5)


def test_one_epoch_visits_every_example_once() -> None:
    batches = epoch_batches(10, 4, torch.Generator().manual_seed(3))
    epoch = [next(batches) for _ in range(steps_per_epoch(10, 4))]
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert steps_per_epoch(10, 0) == 1 and steps_per_epoch(10, 10) == 1 and steps_per_epoch(10, 5) == 2


def test_transform_applies_to_training_batches_only() -> None:
    weight, features, labels = _tiny_problem(seed=6, n=8, m=2, d=3)
    seen = []

    def double(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return 2.0 * batch

    model = model_from_weight(weight)
    loss = train_steps(model, features, labels, logistic_loss, steps=2, lr=0.3, transform=double)
    reference = model_from_weight(weight)
    train_steps(reference, 2.0 * features, labels, logistic_loss, steps=2, lr=0.3)
    torch.testing.assert_close(model.weight, reference.weight, rtol=0, atol=0)
    assert seen == [8, 8]
    assert loss == pytest.approx(evaluate_loss(model, features, labels, logistic_loss))


def test_chunked_evaluation_equals_one_pass() -> None:
    weight, features, labels = _tiny_problem(seed=7, n=9, m=2, d=3)
    model = model_from_weight(weight)
    whole = evaluate_loss(model, features, labels, logistic_loss)
    assert evaluate_loss(model, features, labels, logistic_loss, batch_size=4) == pytest.approx(whole, rel=1e-6)


def test_evaluate_loss_does_not_change_weights() -> None:
    weight, features, labels = _tiny_problem(seed=4)
    model = model_from_weight(weight)
    loss = evaluate_loss(model, features, labels, logistic_loss)
    assert torch.equal(model.weight.detach(), weight)
    assert loss == pytest.approx(_reference_loss(weight.double(), features.double(), labels.double()).item(),
                                 abs=1e-6)
