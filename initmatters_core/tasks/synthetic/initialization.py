"""Initial global models: random, pre-trained (centrally or federated), align-flip, controlled
misaligned fraction, file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from initmatters_core.federation import partition_rows, weighted_average
from initmatters_core.results import load_state_file
from initmatters_core.seeding import Stream, torch_generator
from initmatters_core.settings import HeterogeneitySettings, InitSettings, SettingError
from initmatters_core.tasks.synthetic.alignment import aligned_mask
from initmatters_core.tasks.synthetic.data import SignalNoiseData, rotated_signal, source_set
from initmatters_core.tasks.synthetic.model import WEIGHT_KEY, logistic_loss, model_from_weight
from initmatters_core.tasks.synthetic.partition import realised_heterogeneity
from initmatters_core.tasks.synthetic.settings import ModelSettings
from initmatters_core.training import train_steps


def random_weight(dim: int, filters_per_class: int, init_std: float, generator: torch.Generator) -> torch.Tensor:
    """w_{j,r} ~ N(0, sigma_0^2 I), shape [2, m, d]."""
    return torch.randn(2, filters_per_class, dim, generator=generator) * init_std


def reflect_signal_component(weight: torch.Tensor, signal: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Reflect the mu-component of the filters where `flip` ([2, m]) is True.

    w <- w - 2 <w, u> u with u = mu / ||mu||: the norm and every direction orthogonal to mu are
    unchanged, and the filter's alignment is reversed (unless <w, mu> = 0).
    """
    direction = signal / signal.norm()
    component = weight @ direction  # [2, m]
    reflected = weight - 2.0 * component[..., None] * direction
    return torch.where(flip[..., None], reflected, weight)


def align_flip(weight: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """Make every misaligned filter aligned by reflecting its mu-component."""
    return reflect_signal_component(weight, signal, ~aligned_mask(weight, signal))


def with_misaligned_fraction(
    weight: torch.Tensor, signal: torch.Tensor, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Reflect filters so that exactly round(q m) filters of each class are misaligned.

    Which filters end up misaligned is drawn uniformly per class from `generator`.
    """
    m = int(weight.shape[1])
    num_misaligned = int(round(fraction * m))
    want_misaligned = torch.zeros(2, m, dtype=torch.bool)
    for row in range(2):
        want_misaligned[row, torch.randperm(m, generator=generator)[:num_misaligned]] = True
    is_aligned = aligned_mask(weight, signal)
    return reflect_signal_component(weight, signal, is_aligned == want_misaligned)


def source_seed(init: InitSettings, seed: int) -> int:
    """The seed of the source set: init.source_seed, or the experiment seed when it is None."""
    return seed if init.source_seed is None else init.source_seed


def source_data(init: InitSettings, signal: torch.Tensor, seed: int) -> SignalNoiseData:
    """The balanced source set of (federated) pre-training: the data model with the source's own
    mu (the task's `signal` rotated by init.source_signal_angle, of norm init.source_signal_norm),
    sigma_p, p, size and seed."""
    return source_set(
        source_seed(init, seed),
        rotated_signal(signal, init.source_signal_angle, init.source_signal_norm),
        init.source_noise_std,
        init.source_label_noise,
        init.source_samples,
    )


def pretrain(weight: torch.Tensor, source: SignalNoiseData, init: InitSettings) -> torch.Tensor:
    """Centralized full-batch GD from `weight` on the source set, init.steps steps of init.lr."""
    model = model_from_weight(weight)
    train_steps(model, source.features, source.labels, logistic_loss, steps=init.steps, lr=init.lr)
    return model.weight.detach().clone()


def source_federation(source: SignalNoiseData, init: InitSettings) -> list[np.ndarray]:
    """Rows of the source set held by each of the init.source_clients source clients.

    Label skew init.source_h on the true labels (`federation.partition_rows`, the clients'
    own partitioner); a single client holds the whole set in its order.
    """
    if init.source_clients == 1:
        return [np.arange(len(source), dtype=np.int64)]
    skew = HeterogeneitySettings(name="label_skew", h=init.source_h)
    rows, _ = partition_rows(source.true_labels.numpy().astype(np.int64), skew, init.source_clients,
                             seed=0)  # label skew draws nothing
    return rows


def federated_pretrain(
    weight: torch.Tensor, source: SignalNoiseData, rows: list[np.ndarray], init: InitSettings
) -> torch.Tensor:
    """FedAvg from `weight` on the source federation (client k holds source rows rows[k]):
    init.source_rounds rounds in which every source client runs init.steps full-batch GD steps of
    init.lr from the global model, then the example-weighted average (FedAvg's arithmetic)."""
    sizes = [int(part.shape[0]) for part in rows]
    for _ in range(init.source_rounds):
        local = []
        for part in rows:
            model = model_from_weight(weight)
            train_steps(model, source.features[part], source.labels[part], logistic_loss,
                        steps=init.steps, lr=init.lr)
            local.append(model.weight.detach())
        weight = weighted_average(local, sizes)
    return weight.clone()


def load_weight(path: str | Path, dim: int, filters_per_class: int) -> torch.Tensor:
    """The [2, m, d] weight of a saved state dict, checked against the configured shape.

    Every way the file can be unusable (missing, not a torch file, no "weight", wrong shape,
    non-finite values) is a one-line SettingError naming init.path.
    """
    state = load_state_file(path)
    if not isinstance(state, dict) or not isinstance(state.get(WEIGHT_KEY), torch.Tensor):
        raise SettingError(f"init.path={str(path)!r} holds no {WEIGHT_KEY!r} tensor: give a state dict of the "
                           "two-layer CNN (e.g. a run's model_final.pt)")
    weight = state[WEIGHT_KEY].to(torch.float32)
    expected = [2, filters_per_class, dim]
    if list(weight.shape) != expected:
        raise SettingError(
            f"init.path={str(path)!r} has weight shape {list(weight.shape)}, expected {expected} "
            "(model.filters_per_class, data.dim)"
        )
    if not bool(weight.isfinite().all()):
        raise SettingError(f"init.path={str(path)!r} holds non-finite values (NaN or inf): nothing to train")
    return weight


def initial_weight(
    init: InitSettings, model: ModelSettings, signal: torch.Tensor, seed: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(the global model before round 1 as a [2, m, d] float32 tensor, facts of how it was made).

    Every option except `checkpoint` starts from the same seeded random draw, so runs that
    differ only in `init` are paired. Facts (summary.json): pre-training's effective
    `source_seed`, and the source federation's `source_realised_h`.
    """
    dim = int(signal.shape[0])
    if init.name == "checkpoint":
        return load_weight(init.path, dim, model.filters_per_class), {}
    weight = random_weight(dim, model.filters_per_class, model.init_std, torch_generator(seed, Stream.INIT))
    if init.name == "random":
        return weight, {}
    if init.name == "pretrained":
        return pretrain(weight, source_data(init, signal, seed), init), {"source_seed": source_seed(init, seed)}
    if init.name == "federated_pretrained":
        source = source_data(init, signal, seed)
        rows = source_federation(source, init)
        facts = {"source_seed": source_seed(init, seed),
                 "source_realised_h": realised_heterogeneity([source.true_labels[part].numpy() for part in rows])}
        return federated_pretrain(weight, source, rows, init), facts
    if init.name == "align_flip":
        return align_flip(weight, signal), {}
    if init.name == "misaligned_fraction":
        return with_misaligned_fraction(
            weight, signal, init.misaligned_fraction, torch_generator(seed, Stream.INIT, 1)
        ), {}
    raise ValueError(f"unknown init {init.name!r}")
