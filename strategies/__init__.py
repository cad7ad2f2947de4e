"""Flower strategies by conf/strategy/ name, each with this project's ExperimentTracking mixed in.

Adding a strategy: one file in conf/strategy/ (name: <key> plus the Flower class's keyword
arguments) and one line in STRATEGIES. A strategy that keeps server state in attributes other
than SERVER_STATE_ATTRIBUTES (strategies.tracking) adds their names there, so checkpoints hold it.
"""

from __future__ import annotations

import inspect
from typing import Any

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from initmatters_core.settings import SettingError, StrategySettings
from strategies.tracking import ExperimentTracking, tracked

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}

# Keyword arguments not taken from conf/strategy/: ExperimentTracking sets who trains (the seeded
# schedule); the global model is evaluated by the server, never by clients; and the FedOpt
# family's eta_l is only logged by Flower (clients use fl.lr), a setting that would change nothing.
_NOT_CONFIGURABLE = ("fraction_train", "min_train_nodes", "min_available_nodes", "fraction_evaluate",
                     "min_evaluate_nodes", "eta_l")


def check_strategy(settings: StrategySettings) -> None:
    """One-line SettingError unless the strategy exists and takes every configured option."""
    if settings.name not in STRATEGIES:
        raise SettingError(f"strategy={settings.name!r} is invalid: allowed {'|'.join(STRATEGIES)}")
    accepted = [name for name in inspect.signature(STRATEGIES[settings.name].__init__).parameters
                if name not in ("self", *_NOT_CONFIGURABLE) and not name.endswith("_fn") and not name.endswith("_key")]
    for key in settings.options:
        if key not in accepted:
            raise SettingError(f"strategy.{key} is not an option of strategy={settings.name}: allowed "
                               f"{'|'.join(f'strategy.{name}' for name in accepted)}")


def build_strategy(settings: StrategySettings, **tracking: Any) -> ExperimentTracking:
    """The configured Flower strategy with ExperimentTracking (its keyword arguments in `tracking`)."""
    check_strategy(settings)
    return tracked(STRATEGIES[settings.name])(**tracking, **settings.options)


__all__ = ["STRATEGIES", "ExperimentTracking", "build_strategy", "check_strategy", "tracked"]
