"""Where a configuration of the synthetic task sits: the dimensionless numbers of its regime.

Pure arithmetic on the settings (no torch), reported in summary.json's facts and at start:
- snr = ||mu|| / (sigma_p sqrt(d)): the signal patch against the noise patch's norm;
- one_step_flip_ratio = sigma_0 ||mu|| / (eta ||mu||^2 / m): a random filter's typical
  mu-component against the mu-component one full-batch GD step adds (for a filter that the
  examples of its class activate). Below 1 a single step aligns every misaligned filter, and the
  effect the paper studies is gone before it can be measured;
- overfit measure n ||mu||^4 / (sigma_p^4 d) (Kou et al. 2023: benign overfitting needs it large)
  per client (n the mean client size) and pooled over the K clients (K n).
These are the numbers of the task's law. With heterogeneity.noise_skew or signal_skew, client k
trains on its own law (sigma_p f_k, ||mu|| c_k), and `skew_regime_facts` adds the extremes over
clients of the per-client numbers at those laws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from initmatters_core.settings import ExperimentSettings


def snr(signal_norm: float, noise_std: float, dim: int) -> float:
    """||mu|| / (sigma_p sqrt(d))."""
    return signal_norm / (noise_std * math.sqrt(dim))


def one_step_flip_ratio(init_std: float, signal_norm: float, lr: float, filters_per_class: int) -> float:
    """sigma_0 ||mu|| / (eta ||mu||^2 / m)."""
    return init_std * signal_norm / (lr * signal_norm**2 / filters_per_class)


def overfit_measure(samples: float, signal_norm: float, noise_std: float, dim: int) -> float:
    """n ||mu||^4 / (sigma_p^4 d)."""
    return samples * signal_norm**4 / (noise_std**4 * dim)


def regime_facts(settings: ExperimentSettings) -> dict[str, float]:
    """The regime numbers of a synthetic run (mean client size n = data.samples_per_client)."""
    data, model, fl = settings.data, settings.model, settings.fl
    return {
        "snr": snr(data.signal_norm, data.noise_std, data.dim),
        "one_step_flip_ratio": one_step_flip_ratio(model.init_std, data.signal_norm, fl.lr, model.filters_per_class),
        "overfit_measure_client": overfit_measure(data.samples_per_client, data.signal_norm, data.noise_std, data.dim),
        "overfit_measure_pooled": overfit_measure(
            fl.num_clients * data.samples_per_client, data.signal_norm, data.noise_std, data.dim
        ),
    }


def skew_regime_facts(
    settings: ExperimentSettings, noise_factors: Sequence[float], signal_factors: Sequence[float]
) -> dict[str, float]:
    """With client factors f_k of sigma_p and c_k of ||mu|| (not all 1): the smallest one-step flip
    ratio over clients (the client with the strongest signal) and the range of the per-client overfit
    measure n ||c_k mu||^4 / ((f_k sigma_p)^4 d); empty when every factor is 1."""
    if all(f == 1.0 for f in noise_factors) and all(c == 1.0 for c in signal_factors):
        return {}
    data, model, fl = settings.data, settings.model, settings.fl
    overfit = [overfit_measure(data.samples_per_client, data.signal_norm * c, data.noise_std * f, data.dim)
               for f, c in zip(noise_factors, signal_factors, strict=True)]
    return {
        "one_step_flip_ratio_min": one_step_flip_ratio(
            model.init_std, data.signal_norm * max(signal_factors), fl.lr, model.filters_per_class),
        "overfit_measure_client_min": min(overfit),
        "overfit_measure_client_max": max(overfit),
    }


def regime_line(facts: dict[str, float]) -> str:
    """One log line of the regime numbers."""
    line = (f"regime: snr={facts['snr']:.4g}, one_step_flip_ratio={facts['one_step_flip_ratio']:.3g}, "
            f"n||mu||^4/(sigma_p^4 d)={facts['overfit_measure_client']:.3g} per client, "
            f"{facts['overfit_measure_pooled']:.3g} pooled")
    if "one_step_flip_ratio_min" in facts:
        line += (f"; over the skewed clients: one_step_flip_ratio >= {facts['one_step_flip_ratio_min']:.3g}, "
                 f"per-client overfit measure {facts['overfit_measure_client_min']:.3g}"
                 f"..{facts['overfit_measure_client_max']:.3g}")
    return line


def regime_warnings(facts: dict[str, float]) -> list[str]:
    """Warning lines for a regime where the paper's effect cannot show."""
    ratio = facts["one_step_flip_ratio"]
    if ratio < 1.0:
        return [f"one_step_flip_ratio={ratio:.3g} < 1: one GD step flips every misaligned filter: the effect the "
                "paper studies vanishes; raise model.init_std or lower fl.lr"]
    ratio_min = facts.get("one_step_flip_ratio_min", ratio)
    if ratio_min < 1.0:
        return [f"one_step_flip_ratio_min={ratio_min:.3g} < 1: on the client with the strongest signal one GD step "
                "flips every misaligned filter; lower heterogeneity.signal_skew, raise model.init_std or lower fl.lr"]
    return []
