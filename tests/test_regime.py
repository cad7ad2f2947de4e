"""Where a configuration sits (docs/science.md): the regime numbers against hand computation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from initmatters.compose import load_settings
from initmatters_core.tasks.synthetic.regime import (
    one_step_flip_ratio,
    overfit_measure,
    regime_facts,
    regime_line,
    regime_warnings,
    snr,
)
from initmatters_core.tasks.synthetic.task import server_setup


def test_regime_at_the_defaults_by_hand() -> None:
    """d = 1000, m = 20, ||mu|| = 1.5, sigma_0 = 0.1, eta = 0.5, sigma_p = 1, K = 10, n = 20."""
    facts = regime_facts(load_settings([])[0])
    assert facts["snr"] == pytest.approx(1.5 / 1000**0.5, rel=1e-12)  # 0.0474
    assert facts["one_step_flip_ratio"] == pytest.approx(0.15 / (0.5 * 2.25 / 20), rel=1e-12)  # 8/3
    assert round(facts["one_step_flip_ratio"], 1) == 2.7
    assert facts["overfit_measure_client"] == pytest.approx(20 * 5.0625 / 1000, rel=1e-12)  # 0.10125
    assert facts["overfit_measure_pooled"] == pytest.approx(200 * 5.0625 / 1000, rel=1e-12)  # 1.0125
    assert regime_warnings(facts) == []
    assert regime_line(facts) == ("regime: snr=0.04743, one_step_flip_ratio=2.67, n||mu||^4/(sigma_p^4 d)=0.101 "
                                  "per client, 1.01 pooled")


def test_formulas_scale_as_written() -> None:
    assert snr(2.0, 0.5, 16) == 1.0
    assert one_step_flip_ratio(0.1, 2.0, 0.2, 4) == pytest.approx(0.2 / (0.2 * 4 / 4))
    assert overfit_measure(10, 2.0, 2.0, 5) == 2.0


def test_a_degenerate_regime_is_a_start_up_warning() -> None:
    settings = load_settings(["debug=default", "fl.lr=5"])[0]  # ratio 0.1 * 4 / (5 * 1.5) = 0.053
    setup = server_setup(settings)
    ratio = 0.1 * 4 / (5 * 1.5)
    assert setup.facts["one_step_flip_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert setup.warnings == [f"one_step_flip_ratio={ratio:.3g} < 1: one GD step flips every misaligned filter: the "
                              "effect the paper studies vanishes; raise model.init_std or lower fl.lr"]
    assert "regime: snr=" in setup.description
    assert setup.partition["partitioner_attempts"] == 1
    assert server_setup(replace(settings, fl=replace(settings.fl, lr=0.05))).warnings == []


def test_unrealisable_h_is_a_start_up_warning() -> None:
    setup = server_setup(load_settings(["debug=default", "heterogeneity.h=0.25", "fl.lr=0.05"])[0])  # n = 10: 0.2
    assert setup.warnings == ["heterogeneity.h=0.25 is not realisable with data.samples_per_client=10 "
                              "(n (1 + h) / 2 must be an integer): realised h=0.2000"]
