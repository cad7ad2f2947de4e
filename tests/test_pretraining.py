"""Honest pre-training (docs/science.md, "Pre-training"): the source seed, a source that differs
from the task, and federated pre-training, each against an independent computation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from initmatters.compose import load_settings
from initmatters_core.seeding import Stream, torch_generator
from initmatters_core.settings import ExperimentSettings, InitSettings, SettingError
from initmatters_core.tasks.synthetic.data import rotated_signal, signal_vector
from initmatters_core.tasks.synthetic.initialization import (
    initial_weight,
    random_weight,
    source_data,
    source_federation,
)
from initmatters_core.tasks.synthetic.task import server_setup

DIM, M = 30, 4
SIGNAL = signal_vector(DIM, 1.5)


@pytest.fixture(scope="module")
def settings() -> ExperimentSettings:
    """debug=default with a small init=federated_pretrained (its init section is a superset of pretrained's)."""
    return load_settings(f"debug=default init=federated_pretrained data.dim={DIM} model.filters_per_class={M} "
                         "init.source_clients=2 init.source_rounds=2 init.steps=5")[0]


def _init(settings: ExperimentSettings, **changes) -> InitSettings:
    return replace(settings.init, **changes)


def _weight(settings: ExperimentSettings, seed: int = 0, **changes) -> tuple[torch.Tensor, dict]:
    return initial_weight(_init(settings, **changes), settings.model, SIGNAL, seed)


def _random(settings: ExperimentSettings, seed: int = 0) -> torch.Tensor:
    return random_weight(DIM, M, settings.model.init_std, torch_generator(seed, Stream.INIT))


def _hand_gd(weight: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Full-batch GD on the paper's network and logistic loss, written out in float64."""
    w = weight.double().clone().requires_grad_(True)
    x, y = features.double(), labels.double()
    for _ in range(steps):
        scores = torch.relu(torch.einsum("npd,jrd->npjr", x, w)).sum(dim=1).mean(dim=2)  # [n, 2]
        loss = torch.log1p(torch.exp(-y * (scores[:, 0] - scores[:, 1]))).mean()
        (grad,) = torch.autograd.grad(loss, w)
        w = (w - lr * grad).detach().requires_grad_(True)
    return w.detach()


# --- the source seed --------------------------------------------------------------------------------


def test_source_seed_null_follows_the_experiment_seed_and_an_integer_keeps_one_source(settings) -> None:
    pretrained = _init(settings, name="pretrained", source_seed=None)
    a, b = source_data(pretrained, SIGNAL, 0), source_data(pretrained, SIGNAL, 1)
    assert not torch.equal(a.features, b.features)
    fixed = replace(pretrained, source_seed=1000)
    assert torch.equal(source_data(fixed, SIGNAL, 0).features, source_data(fixed, SIGNAL, 1).features)
    assert torch.equal(source_data(fixed, SIGNAL, 7).features, source_data(replace(pretrained, source_seed=None),
                                                                           SIGNAL, 1000).features)
    assert _weight(settings, 3, name="pretrained", source_seed=None)[1] == {"source_seed": 3}
    assert settings.init.source_seed is None  # the default: the source follows the experiment seed
    assert _weight(settings, 3, name="pretrained")[1] == {"source_seed": 3}
    assert _weight(settings, 3, name="pretrained", source_seed=1000)[1] == {"source_seed": 1000}


def test_pretrained_is_full_batch_gd_on_the_source_set(settings) -> None:
    init = _init(settings, name="pretrained", steps=3, lr=0.5)
    weight, _ = initial_weight(init, settings.model, SIGNAL, 0)
    source = source_data(init, SIGNAL, 0)
    expected = _hand_gd(_random(settings), source.features, source.labels, steps=3, lr=0.5)
    torch.testing.assert_close(weight.double(), expected, rtol=0, atol=1e-5)


# --- a source that differs from the task ------------------------------------------------------------


@pytest.mark.parametrize(("angle", "norm"), [(0.0, 1.5), (30.0, 2.0), (90.0, 1.0), (180.0, 1.5)])
def test_rotated_signal_has_the_angle_and_norm(angle: float, norm: float) -> None:
    source = rotated_signal(SIGNAL, angle, norm).double()
    expected = torch.zeros(DIM, dtype=torch.float64)
    expected[0], expected[1] = norm * math.cos(math.radians(angle)), norm * math.sin(math.radians(angle))
    torch.testing.assert_close(source, expected, rtol=0, atol=1e-6)
    if angle == 0.0:
        assert torch.equal(rotated_signal(SIGNAL, 0.0, 1.5), SIGNAL)  # the task's own mu, bit for bit


def test_source_data_follow_their_own_law(settings) -> None:
    init = _init(settings, name="pretrained", source_samples=4000, source_signal_angle=60.0, source_signal_norm=2.0,
                 source_noise_std=0.5, source_label_noise=0.2)
    source = source_data(init, SIGNAL, 0)
    mu = rotated_signal(SIGNAL, 60.0, 2.0)
    torch.testing.assert_close(source.features[:, 0, :], source.true_labels[:, None] * mu[None, :])
    assert source.noise.double().matmul(mu.double()).abs().max() < 1e-5  # orthogonal to the SOURCE mu
    # sigma_p^2 (d - 1) per noise patch (one direction projected out)
    assert source.noise.double().pow(2).sum(dim=1).mean() == pytest.approx(0.25 * (DIM - 1), rel=0.02)
    flipped = float((source.labels != source.true_labels).double().mean())
    assert flipped == pytest.approx(0.2, abs=4 * math.sqrt(0.2 * 0.8 / 4000))
    assert int((source.true_labels == 1).sum()) == 2000


@pytest.mark.parametrize("change", [
    {"source_seed": 5}, {"source_samples": 100}, {"source_noise_std": 2.0}, {"source_label_noise": 0.2},
    {"source_signal_angle": 30.0}, {"source_signal_norm": 2.0}, {"steps": 20}, {"lr": 0.1},
])
@pytest.mark.parametrize("name", ["pretrained", "federated_pretrained"])
def test_every_source_setting_changes_w0(settings, name: str, change: dict) -> None:
    assert not torch.equal(_weight(settings, name=name, **change)[0], _weight(settings, name=name)[0])


@pytest.mark.parametrize("change", [{"source_clients": 4}, {"source_h": 1.0}, {"source_rounds": 3}])
def test_every_source_federation_setting_changes_w0(settings, change: dict) -> None:
    assert not torch.equal(_weight(settings, **change)[0], _weight(settings)[0])


@pytest.mark.parametrize(("overrides", "key"), [
    ("init=pretrained init.source_seed=-1", "init.source_seed"),
    ("init=pretrained init.source_label_noise=0.5", "init.source_label_noise"),
    ("init=pretrained init.source_signal_angle=181", "init.source_signal_angle"),
    ("init=pretrained init.source_signal_angle=-1", "init.source_signal_angle"),
    ("init=pretrained init.source_signal_norm=0", "init.source_signal_norm"),
    ("init=pretrained init.source_samples=7", "init.source_samples"),
    ("init=federated_pretrained init.source_clients=3", "init.source_clients"),
    ("init=federated_pretrained init.source_clients=0", "init.source_clients"),
    ("init=federated_pretrained init.source_clients=6", "init.source_samples"),  # 200 is no multiple of 6
    ("init=federated_pretrained init.source_h=1.5", "init.source_h"),
    ("init=federated_pretrained init.source_clients=1 init.source_h=0.5", "init.source_h"),
    ("init=federated_pretrained init.source_rounds=0", "init.source_rounds"),
    ("init=federated_pretrained init.steps=-1", "init.steps"),
])
def test_bad_source_settings_are_one_line_errors(overrides: str, key: str) -> None:
    with pytest.raises(SettingError, match=rf"^{key.replace('.', '[.]')}=.* is invalid: allowed [^\n]*$"):
        load_settings(overrides.split())


# --- federated pre-training -------------------------------------------------------------------------


def test_one_source_client_for_one_round_is_centralized_pretraining(settings) -> None:
    """Same source set, same steps: K_s = 1, one round is init=pretrained, bit for bit."""
    federated, facts = _weight(settings, source_clients=1, source_h=0.0, source_rounds=1, steps=7)
    centralized, _ = _weight(settings, name="pretrained", steps=7)
    assert torch.equal(federated, centralized)
    assert facts == {"source_seed": 0, "source_realised_h": 0.0}  # seed 0, the source follows it


def test_federated_pretraining_is_fedavg_of_local_gd(settings) -> None:
    """K_s = 2 with h = 1 (each source client holds one label), 2 rounds of 3 steps, written out."""
    init = _init(settings, source_clients=2, source_h=1.0, source_rounds=2, steps=3, lr=0.5)
    weight, facts = initial_weight(init, settings.model, SIGNAL, 0)
    assert facts["source_realised_h"] == 1.0
    source = source_data(init, SIGNAL, 0)
    rows = [np.flatnonzero(source.true_labels.numpy() == 1), np.flatnonzero(source.true_labels.numpy() == -1)]
    global_weight = _random(settings).double()
    for _ in range(2):
        local = [_hand_gd(global_weight, source.features[part], source.labels[part], 3, 0.5) for part in rows]
        global_weight = (local[0] + local[1]) / 2  # equal sizes: the weighted average is the mean
    torch.testing.assert_close(weight.double(), global_weight, rtol=0, atol=1e-5)


def test_source_federation_is_label_skew_of_the_source_set(settings) -> None:
    init = _init(settings, source_clients=4, source_h=0.5)
    source = source_data(init, SIGNAL, 0)
    rows = source_federation(source, init)
    assert sorted(np.concatenate(rows).tolist()) == list(range(200))
    for k, part in enumerate(rows):
        labels = source.true_labels[part].numpy()
        majority = 1 if k % 2 == 0 else -1
        assert (labels == majority).sum() == round(50 * 1.5 / 2) and part.shape[0] == 50


def test_weighted_average_weights_by_examples() -> None:
    from initmatters_core.federation import weighted_average

    a, b = torch.tensor([1.0, 2.0]), torch.tensor([4.0, -1.0])
    torch.testing.assert_close(weighted_average([a, b], [1, 3]), (1 * a + 3 * b) / 4)
    assert torch.equal(weighted_average([a], [5]), a)


def test_server_setup_reports_the_effective_source_seed(settings) -> None:
    setup = server_setup(replace(settings, seed=4, init=_init(settings, name="pretrained", source_seed=None)))
    assert setup.facts["source_seed"] == 4
    assert setup.init_state["weight"].shape == (2, M, DIM)


def test_federated_pretraining_aligns_filters(settings) -> None:
    """Pre-training does its job at the debug sizes: fewer misaligned filters than the random draw."""
    signs = torch.tensor([1.0, -1.0])[:, None]
    before, after = _random(settings), _weight(settings)[0]
    misaligned_before, misaligned_after = (int((signs * (w @ SIGNAL) <= 0).sum()) for w in (before, after))
    assert misaligned_after < misaligned_before
