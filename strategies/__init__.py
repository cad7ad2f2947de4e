"""Flower strategies by conf/strategy/ name, each with this project's ExperimentTracking mixed in.

Adding a strategy: one file in conf/strategy/ (name: <key> plus the Flower class's keyword
arguments) and one line in STRATEGIES (the class in flwr.serverapp.strategy and the keyword
arguments conf/ may set; a test checks them against the class's signature). A strategy that keeps
server state in attributes other than SERVER_STATE_ATTRIBUTES (strategies.tracking) adds their
names there, so checkpoints hold it. Checking a strategy's settings imports neither Flower nor
torch (a bad setting fails in a second); building one does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from initmatters_core.settings import SettingError, StrategySettings

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from strategies.tracking import ExperimentTracking

FLOWER_STRATEGIES = "flwr.serverapp.strategy"


@dataclass(frozen=True)
class StrategyEntry:
    """A Flower strategy class (by name, in FLOWER_STRATEGIES) and the options conf/ may set."""

    flower_class: str
    options: tuple[str, ...]


STRATEGIES: dict[str, StrategyEntry] = {
    "fedavg": StrategyEntry("FedAvg", ()),
    "fedprox": StrategyEntry("FedProx", ("proximal_mu",)),
    "fedavgm": StrategyEntry("FedAvgM", ("server_learning_rate", "server_momentum")),
    "fedadam": StrategyEntry("FedAdam", ("eta", "beta_1", "beta_2", "tau")),
    "fedyogi": StrategyEntry("FedYogi", ("eta", "beta_1", "beta_2", "tau")),
    "fedadagrad": StrategyEntry("FedAdagrad", ("eta", "tau")),
}

# Keyword arguments never taken from conf/strategy/: ExperimentTracking sets who trains (the seeded
# schedule); the global model is evaluated by the server, never by clients; and the FedOpt
# family's eta_l is only logged by Flower (clients use fl.lr), a setting that would change nothing.
NOT_CONFIGURABLE = ("fraction_train", "min_train_nodes", "min_available_nodes", "fraction_evaluate",
                    "min_evaluate_nodes", "eta_l")


def flower_strategy_class(name: str) -> type[Strategy]:
    """The Flower class of registered strategy `name` (imports Flower)."""
    return getattr(importlib.import_module(FLOWER_STRATEGIES), STRATEGIES[name].flower_class)


def check_strategy(settings: StrategySettings) -> None:
    """One-line SettingError unless the strategy exists and takes every configured option."""
    if settings.name not in STRATEGIES:
        raise SettingError(f"strategy={settings.name!r} is invalid: allowed {'|'.join(STRATEGIES)}")
    accepted = STRATEGIES[settings.name].options
    for key in settings.options:
        if key not in accepted:
            allowed = "|".join(f"strategy.{name}" for name in accepted) or "none (it has no options)"
            raise SettingError(f"strategy.{key} is not an option of strategy={settings.name}: allowed {allowed}")


def build_strategy(settings: StrategySettings, **tracking: Any) -> ExperimentTracking:
    """The configured Flower strategy with ExperimentTracking (its keyword arguments in `tracking`)."""
    from strategies.tracking import tracked

    check_strategy(settings)
    return tracked(flower_strategy_class(settings.name))(**tracking, **settings.options)


__all__ = ["NOT_CONFIGURABLE", "STRATEGIES", "build_strategy", "check_strategy", "flower_strategy_class"]
