"""What the sweep report (initmatters.report) and its sections (initmatters.penalty) share: the
settings keys they read, how a setting reads in tables and figures, and statistics over seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

SEED_KEY = "seed"
H_KEY = "heterogeneity.h"
SCHEME_KEY = "heterogeneity.name"
HETEROGENEITY_PREFIX = "heterogeneity."
INIT_KEY = "init.name"
STEPS_KEY = "init.steps"
TAU_KEY = "fl.local_steps"

# How a setting reads in legends and titles ("{}" is the value); other keys read "<last part>=<value>".
PRETTY_KEYS = {
    H_KEY: "h = {}",
    "heterogeneity.noise_skew": "noise skew {}",
    "heterogeneity.signal_skew": "signal skew {}",
    "heterogeneity.alpha": "α = {}",
    "heterogeneity.classes_per_client": "{} classes/client",
    TAU_KEY: "τ = {}",
    "fl.local_epochs": "{} local epoch(s)",
    "fl.num_rounds": "{} round(s)",
    "fl.num_clients": "K = {}",
    "fl.lr": "η = {}",
    "model.init_std": "σ₀ = {}",
    "model.filters_per_class": "m = {}",
    STEPS_KEY: "{} pre-training step(s)",
    "init.misaligned_fraction": "q = {}",
    "init.lr": "pre-training lr = {}",
}
SCHEME_NAMES = {"label_skew": "label skew", "iid": "IID", "dirichlet": "Dirichlet", "pathological": "pathological"}


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample std with n - 1) of the non-NaN values; NaN where undefined."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return math.nan, math.nan
    mean = math.fsum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def mean_curve(runs: Iterable[Any], column: str) -> tuple[list[float], list[float], list[float]]:
    """(rounds, mean over runs, sample std over runs (NaN where fewer than two)) of a rounds.csv
    column; `runs` have .rounds (rounds.csv rows)."""
    values: dict[float, list[float]] = {}
    for run in runs:
        for row in run.rounds:
            if not math.isnan(row.get(column, math.nan)):
                values.setdefault(row["round"], []).append(row[column])
    rounds = sorted(values)
    stats = [mean_std(values[r]) for r in rounds]
    return rounds, [m for m, _ in stats], [s for _, s in stats]


def format_mean_std(mean: float, std: float, decimals: int, signed: bool = False) -> str:
    """'0.1570 ± 0.0123'; the mean alone for one seed; '' when there is no value."""
    if mean is None or math.isnan(mean):
        return ""
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{decimals}f}"
    if std is None or math.isnan(std):
        return text
    return f"{text} ± {std:.{decimals}f}"


def format_setting(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def key_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def format_key_value(key: str, value: Any) -> str:
    """How one setting reads in a legend or title: 'τ = 10', '50 rounds', 'pretrained'."""
    if key == SCHEME_KEY:
        return SCHEME_NAMES.get(value, format_setting(value))
    if key in PRETTY_KEYS:
        text = PRETTY_KEYS[key].format(format_setting(value))
        return text.replace("(s)", "" if value == 1 else "s")
    short = key_name(key)
    return format_setting(value) if short == "name" else f"{short}={format_setting(value)}"


def freeze_value(value: Any) -> Any:
    """A hashable form of a settings value (mappings and lists become sorted tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze_value(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze_value(v) for v in value)
    return value


def freeze(settings: Mapping[str, Any]) -> tuple:
    """A hashable form of flattened settings, independent of key order."""
    return tuple(sorted((k, freeze_value(v)) for k, v in settings.items()))


def same(a: Any, b: Any) -> bool:
    return freeze_value(a) == freeze_value(b)


def sort_value(value: Any) -> tuple:
    """Sort key of a settings value: numbers by value, then strings and booleans, None last."""
    if value is None:
        return (2, "")
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, str(value))
