"""Initial global models (docs/science.md, "Pre-training"): random, align-flip, q, pretrained, file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from initmatters_core.results import save_state
from initmatters_core.settings import SettingError
from initmatters_core.tasks.synthetic.data import signal_vector
from initmatters_core.tasks.synthetic.initialization import (
    align_flip,
    initial_weight,
    load_weight,
    random_weight,
    with_misaligned_fraction,
)

SIGNS = np.array([1.0, -1.0])


def _random_signal(dim: int, norm: float, seed: int) -> torch.Tensor:
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (norm * v / v.norm()).float()


def _misaligned_np(weight: torch.Tensor, mu: torch.Tensor) -> np.ndarray:
    """Boolean [2, m], computed independently in float64: j <w_jr, mu> <= 0."""
    return SIGNS[:, None] * (weight.double().numpy() @ mu.double().numpy()) <= 0


def _split(weight: torch.Tensor, mu: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(component along mu [2, m], part orthogonal to mu [2, m, d]) in float64."""
    w, u = weight.double().numpy(), mu.double().numpy() / np.linalg.norm(mu.double().numpy())
    along = w @ u
    return along, w - along[..., None] * u


def test_align_flip_on_axis_signal_negates_only_the_first_coordinate() -> None:
    mu = signal_vector(8, 1.5)
    weight = random_weight(8, 30, 0.1, torch.Generator().manual_seed(0))
    flipped = align_flip(weight, mu)
    misaligned = _misaligned_np(weight, mu)
    assert 5 < misaligned.sum() < 55
    assert not _misaligned_np(flipped, mu).any()
    # Exact: coordinates 1.. unchanged, coordinate 0 negated where misaligned, untouched elsewhere.
    assert torch.equal(flipped[..., 1:], weight[..., 1:])
    expected_first = np.where(misaligned, -weight[..., 0].numpy(), weight[..., 0].numpy())
    np.testing.assert_array_equal(flipped[..., 0].numpy(), expected_first)


def test_align_flip_general_signal_preserves_norms_and_orthogonal_parts() -> None:
    mu = _random_signal(12, 2.0, seed=1)
    weight = random_weight(12, 40, 0.1, torch.Generator().manual_seed(1))
    flipped = align_flip(weight, mu)
    assert _misaligned_np(weight, mu).sum() > 10
    assert not _misaligned_np(flipped, mu).any()
    np.testing.assert_allclose(flipped.norm(dim=2).double().numpy(), weight.norm(dim=2).double().numpy(),
                               rtol=1e-6)
    along_before, orth_before = _split(weight, mu)
    along_after, orth_after = _split(flipped, mu)
    np.testing.assert_allclose(orth_after, orth_before, atol=1e-7)
    np.testing.assert_allclose(np.abs(along_after), np.abs(along_before), atol=1e-7)
    aligned = ~_misaligned_np(weight, mu)
    assert torch.equal(flipped[torch.from_numpy(aligned)], weight[torch.from_numpy(aligned)])


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_with_misaligned_fraction_is_exact_per_class(fraction: float) -> None:
    m = 8
    mu = _random_signal(10, 1.5, seed=2)
    weight = random_weight(10, m, 0.1, torch.Generator().manual_seed(2))
    result = with_misaligned_fraction(weight, mu, fraction, torch.Generator().manual_seed(3))
    misaligned = _misaligned_np(result, mu)
    assert misaligned.sum(axis=1).tolist() == [round(fraction * m)] * 2
    # Only the mu-component may change.
    np.testing.assert_allclose(_split(result, mu)[1], _split(weight, mu)[1], atol=1e-7)
    np.testing.assert_allclose(result.norm(dim=2).numpy(), weight.norm(dim=2).numpy(), rtol=1e-6)


def test_with_misaligned_fraction_choice_depends_on_generator() -> None:
    mu = signal_vector(10, 1.5)
    weight = random_weight(10, 20, 0.1, torch.Generator().manual_seed(4))
    a = with_misaligned_fraction(weight, mu, 0.5, torch.Generator().manual_seed(1))
    b = with_misaligned_fraction(weight, mu, 0.5, torch.Generator().manual_seed(1))
    c = with_misaligned_fraction(weight, mu, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not np.array_equal(_misaligned_np(a, mu), _misaligned_np(c, mu))


def _initial(settings) -> torch.Tensor:
    mu = signal_vector(settings.data.dim, settings.data.signal_norm)
    return initial_weight(settings.init, settings.model, mu, settings.seed)[0]


def test_random_initial_weight_is_seeded(compose_settings) -> None:
    settings, _ = compose_settings("debug=default")
    a, b = _initial(settings), _initial(settings)
    assert a.shape == (2, settings.model.filters_per_class, settings.data.dim)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, _initial(replace(settings, seed=settings.seed + 1)))
    assert a.std().item() == pytest.approx(settings.model.init_std, rel=0.15)


def test_inits_are_paired_with_the_random_draw(compose_settings) -> None:
    base = "debug=default model.filters_per_class=30"
    random_init = _initial(compose_settings(base)[0])
    mu = signal_vector(100, 1.5)
    flipped = _initial(compose_settings(f"{base} init=align_flip")[0])
    assert _misaligned_np(random_init, mu).sum() > 0
    # align_flip = the random draw with misaligned filters' mu-coordinate negated (mu = ||mu|| e_1).
    expected = random_init.clone()
    expected[..., 0] = torch.from_numpy(
        np.where(_misaligned_np(random_init, mu), -random_init[..., 0].numpy(), random_init[..., 0].numpy()))
    assert torch.equal(flipped, expected)
    quarter = _initial(compose_settings(f"{base} init=misaligned_fraction init.misaligned_fraction=0.25")[0])
    assert torch.equal(quarter[..., 1:], random_init[..., 1:])
    assert _misaligned_np(quarter, mu).sum(axis=1).tolist() == [round(0.25 * 30)] * 2
    # Pre-training for zero steps is the random draw itself.
    zero_steps = _initial(compose_settings(f"{base} init=pretrained init.steps=0")[0])
    assert torch.equal(zero_steps, random_init)


def test_pretrained_has_far_fewer_misaligned_filters(compose_settings) -> None:
    overrides = "debug=default model.filters_per_class=20"
    mu = signal_vector(100, 1.5)
    for seed in (0, 1):
        random_init = _initial(compose_settings(f"{overrides} seed={seed}")[0])
        pretrained_settings, _ = compose_settings(f"init=pretrained {overrides} seed={seed}")
        assert pretrained_settings.init.steps > 0
        pretrained = _initial(pretrained_settings)
        random_misaligned = int(_misaligned_np(random_init, mu).sum())
        pretrained_misaligned = int(_misaligned_np(pretrained, mu).sum())
        assert random_misaligned >= 10  # about half of 40
        assert pretrained_misaligned <= random_misaligned // 4
        # Pre-training learned signal: gamma = j <w - w0, mu> is positive on average.
        gamma = SIGNS[:, None] * ((pretrained - random_init).double().numpy() @ mu.double().numpy())
        assert gamma.mean() > 0


def test_load_weight_roundtrip(tmp_path: Path) -> None:
    weight = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "model.pt"
    save_state(path, {"weight": weight})
    loaded = load_weight(path, dim=5, filters_per_class=3)
    assert torch.equal(loaded, weight)
    assert loaded.dtype == torch.float32


def test_checkpoint_init_loads_the_file(tmp_path: Path, compose_settings) -> None:
    settings, _ = compose_settings("debug=default")
    weight = torch.randn(2, settings.model.filters_per_class, settings.data.dim,
                         generator=torch.Generator().manual_seed(9))
    path = tmp_path / "model_final.pt"
    save_state(path, {"weight": weight})
    checkpoint, _ = compose_settings(f"debug=default init=checkpoint init.path={path}")
    assert torch.equal(_initial(checkpoint), weight)


def test_load_weight_wrong_shape_names_init_path(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_state(path, {"weight": torch.zeros(2, 3, 5)})
    with pytest.raises(ValueError, match="init.path") as error:
        load_weight(path, dim=6, filters_per_class=3)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="init.path"):
        load_weight(path, dim=5, filters_per_class=4)


def test_load_weight_without_weight_key(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"something": torch.zeros(2, 3, 5)}, path)
    with pytest.raises(ValueError, match="init.path"):
        load_weight(path, dim=5, filters_per_class=3)


def test_load_weight_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="init.path=.* does not exist"):
        load_weight(tmp_path / "nope.pt", dim=5, filters_per_class=3)
