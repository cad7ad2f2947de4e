"""Typed, validated experiment settings: the sections every task shares, and the checks.

The launchers (Hydra, `flwr run`) turn conf/ into a plain nested dict; everything below them
receives frozen dataclasses. Sections every task has live here (seed, heterogeneity, init, fl,
strategy, log); the `data` and `model` sections belong to a task (`initmatters_core.tasks`,
which also builds `ExperimentSettings` from a dict). Every check raises `SettingError` with one
line that names the setting and the allowed values, so a bad run fails before any start-up cost.
No torch here: validation costs no import of the numerical stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Protocol

DEVICES = ("cpu", "cuda", "auto")
MAX_SKEW = 3.0  # largest heterogeneity.noise_skew / signal_skew
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"  # characters W&B does not allow in a project name


class SettingError(ValueError):
    """A setting is outside its allowed values; the message is one line naming it."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise SettingError("<key>=<value> is invalid: allowed <allowed>") unless `ok`."""
    if not ok:
        raise SettingError(f"{key}={value!r} is invalid: allowed {allowed}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(key: str, value: Any) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, value, "a positive integer")


def non_negative_int(key: str, value: Any) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key, value, "an integer >= 0")


def positive_float(key: str, value: Any) -> None:
    require(is_number(value) and value > 0 and math.isfinite(value), key, value, "a finite number > 0")


def unit_interval(key: str, value: Any, *, closed_right: bool = True) -> None:
    ok = is_number(value) and 0.0 <= value and (value <= 1.0 if closed_right else value < 1.0)
    require(ok, key, value, "a number in [0, 1]" if closed_right else "a number in [0, 1)")


def one_of(key: str, value: Any, allowed: tuple[str, ...], note: str = "") -> None:
    require(value in allowed, key, value, "|".join(allowed) + (f" {note}" if note else ""))


class TaskSection(Protocol):
    """A task-owned section (data, model): a frozen dataclass with a name and its own checks."""

    name: str

    def validate(self) -> None: ...


@dataclass(frozen=True)
class HeterogeneitySettings:
    """How labels are spread over clients (the task says which schemes it supports), and the
    clients' spread of noise level and signal strength (synthetic task only)."""

    name: str  # label_skew | iid | dirichlet | pathological
    h: float | None = None  # label_skew: mean |n+ - n-| / n over clients, in [0, 1]
    alpha: float | None = None  # dirichlet concentration
    classes_per_client: int | None = None  # pathological: distinct labels per client
    min_partition_size: int | None = None  # dirichlet: redraw until every client has this many (>= 1)
    noise_skew: float = 0.0  # synthetic task: std over clients of log(client sigma_p / sigma_p); 0 = off
    signal_skew: float = 0.0  # synthetic task: std over clients of log(client ||mu|| / ||mu||); 0 = off

    def validate(self, schemes: tuple[str, ...], note: str = "") -> None:
        """Checks of the scheme's own options; `schemes` are those the task supports."""
        one_of("heterogeneity", self.name, schemes, note)
        for key, value in (("heterogeneity.noise_skew", self.noise_skew),
                           ("heterogeneity.signal_skew", self.signal_skew)):
            # MAX_SKEW bounds the largest client factor (about exp(1.73 s)) so that the data stay finite.
            require(is_number(value) and 0.0 <= value <= MAX_SKEW, key, value,
                    f"a number in [0, {MAX_SKEW:g}] (0 = off)")
        if self.name == "label_skew":
            unit_interval("heterogeneity.h", self.h)
        if self.name == "dirichlet":
            positive_float("heterogeneity.alpha", self.alpha)
            # >= 1: a client without data cannot train, so none is ever made
            positive_int("heterogeneity.min_partition_size", self.min_partition_size)
        if self.name == "pathological":
            positive_int("heterogeneity.classes_per_client", self.classes_per_client)


@dataclass(frozen=True)
class InitSettings:
    """Initialization of the global model before round 1; the task says which names it knows."""

    name: str
    steps: int | None = None  # pretrained / proxy_pretrained: centralized (S)GD steps (federated_pretrained: per round)
    lr: float | None = None  # pretrained / proxy_pretrained / federated_pretrained: learning rate
    source_samples: int | None = None  # (federated_)pretrained: size of the balanced source set
    source_seed: int | None = None  # (federated_)pretrained: seed of the source set; None = the experiment seed
    source_noise_std: float | None = None  # (federated_)pretrained: sigma_p of the source data
    source_label_noise: float | None = None  # (federated_)pretrained: p of the source data
    source_signal_angle: float | None = None  # (federated_)pretrained: degrees between the source mu and the task's
    source_signal_norm: float | None = None  # (federated_)pretrained: ||mu|| of the source data
    source_clients: int | None = None  # federated_pretrained: K_s, clients of the source federation
    source_h: float | None = None  # federated_pretrained: label skew h of the source federation
    source_rounds: int | None = None  # federated_pretrained: FedAvg rounds on the source federation
    misaligned_fraction: float | None = None  # misaligned_fraction: q, per class
    path: str | None = None  # checkpoint: a saved state dict; imagenet: the weights file ("" = download)

    def validate(self, names: tuple[str, ...], note: str = "") -> None:
        """Checks shared by every task; `names` are the inits the task knows."""
        one_of("init", self.name, names, note)
        if self.name == "checkpoint":
            require(isinstance(self.path, str) and self.path != "", "init.path", self.path,
                    "the path of a saved state dict (e.g. a run's model_final.pt)")


@dataclass(frozen=True)
class FLSettings:
    """Federated training: rounds, clients, and the local optimizer of the one training loop."""

    num_clients: int  # K
    num_rounds: int
    local_steps: int  # tau
    lr: float  # eta
    batch_size: int  # 0 = full-batch GD; > 0 = mini-batch SGD of that size
    fraction_train: float  # share of clients sampled per round
    wait_for_nodes_s: float  # how long the server waits for the SuperNodes to connect (server only)
    local_epochs: int  # > 0: local_epochs passes over the client's data replace local_steps
    momentum: float  # SGD momentum (0 = plain (S)GD, the paper's update)
    weight_decay: float  # L2 penalty of SGD
    device: str  # cpu|cuda|auto (auto = cuda when available) for local training and server measurements

    def validate(self) -> None:
        self.local().validate()
        non_negative_int("fl.num_rounds", self.num_rounds)
        require(is_number(self.fraction_train) and 0.0 < self.fraction_train <= 1.0,
                "fl.fraction_train", self.fraction_train, "a number in (0, 1]")
        positive_float("fl.wait_for_nodes_s", self.wait_for_nodes_s)

    def local(self) -> LocalTrainingSettings:
        """What a client needs of these settings."""
        return LocalTrainingSettings(**{f.name: getattr(self, f.name) for f in fields(LocalTrainingSettings)})


@dataclass(frozen=True)
class LocalTrainingSettings:
    """The part of `fl` a client uses: its partition count and the local optimizer of the one loop."""

    num_clients: int
    local_steps: int
    lr: float
    batch_size: int
    local_epochs: int
    momentum: float
    weight_decay: float
    device: str

    def validate(self) -> None:
        positive_int("fl.num_clients", self.num_clients)
        positive_int("fl.local_steps", self.local_steps)
        positive_float("fl.lr", self.lr)
        non_negative_int("fl.batch_size", self.batch_size)
        non_negative_int("fl.local_epochs", self.local_epochs)
        require(is_number(self.momentum) and 0.0 <= self.momentum < 1.0, "fl.momentum", self.momentum,
                "a number in [0, 1)")
        require(is_number(self.weight_decay) and self.weight_decay >= 0.0 and math.isfinite(self.weight_decay),
                "fl.weight_decay", self.weight_decay, "a finite number >= 0")
        one_of("fl.device", self.device, DEVICES)


@dataclass(frozen=True)
class StrategySettings:
    """The server's strategy: a Flower strategy by name and the options of its constructor.

    `options` are the keyword arguments of the Flower class (e.g. fedprox: proximal_mu; fedadam:
    eta, eta_l, beta_1, beta_2, tau); which names exist is checked against the class by the
    server (strategies/), the values here.
    """

    name: str
    options: Mapping[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        require(isinstance(self.name, str) and self.name != "", "strategy", self.name, "a strategy of conf/strategy/")
        for key, value in self.options.items():
            require(is_number(value) and math.isfinite(value), f"strategy.{key}", value, "a finite number")

    def to_dict(self) -> dict[str, Any]:
        """The conf/ form: {"name": ..., <option>: <value>, ...}."""
        return {"name": self.name, **self.options}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StrategySettings:
        require(isinstance(values, Mapping) and "name" in values, "strategy", values,
                "a mapping with a name (a file of conf/strategy/)")
        options = {key: float(value) if is_number(value) else value for key, value in values.items() if key != "name"}
        return cls(name=values["name"], options=options)


@dataclass(frozen=True)
class LogSettings:
    """What the server records besides the always-on metrics."""

    noise_memorization: bool  # clients report rho statistics (needs w(0) in each message)
    plots: bool
    checkpoint_every: int  # write the resume checkpoint every k rounds (and always when a run stops early)
    tensorboard: bool  # every rounds.csv row to TensorBoard (<run>/tensorboard/; the `tensorboard` extra)
    wandb: bool  # every rounds.csv row to Weights & Biases (<run>/wandb/, offline by default; the `wandb` extra)
    wandb_project: str  # the W&B project of the runs

    def validate(self) -> None:
        for key in ("noise_memorization", "plots", "tensorboard", "wandb"):
            require(isinstance(getattr(self, key), bool), f"log.{key}", getattr(self, key), "true|false")
        require(isinstance(self.wandb_project, str) and self.wandb_project.strip() != ""
                and not set(self.wandb_project) & set(WANDB_PROJECT_FORBIDDEN), "log.wandb_project",
                self.wandb_project, f"a non-empty name without any of {' '.join(WANDB_PROJECT_FORBIDDEN)}")
        positive_int("log.checkpoint_every", self.checkpoint_every)


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything one run needs; built and validated by `initmatters_core.tasks.settings_from_dict`."""

    seed: int
    data: Any  # the task's data section (e.g. tasks.synthetic.settings.DataSettings)
    heterogeneity: HeterogeneitySettings
    model: Any  # the task's model section
    init: InitSettings
    fl: FLSettings
    log: LogSettings
    strategy: StrategySettings = field(default_factory=lambda: StrategySettings(name="fedavg"))

    def validate_shared(self) -> None:
        """Checks of the sections every task has (the task checks the rest)."""
        non_negative_int("seed", self.seed)
        self.data.validate()
        self.model.validate()
        self.fl.validate()
        self.strategy.validate()
        self.log.validate()

    def to_dict(self) -> dict[str, Any]:
        """The nested conf/ form (inverse of settings_from_dict)."""
        values = asdict(self)
        values["strategy"] = self.strategy.to_dict()
        return values


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs of the run's settings: all that travels in a train message.

    Server-only settings (init, log, strategy, rounds, sampling, waits) stay on the server.
    """

    seed: int
    data: Any
    heterogeneity: HeterogeneitySettings
    model: Any
    fl: LocalTrainingSettings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def client_settings(settings: ExperimentSettings) -> ClientSettings:
    """The client's view of a run's settings."""
    return ClientSettings(seed=settings.seed, data=settings.data, heterogeneity=settings.heterogeneity,
                          model=settings.model, fl=settings.fl.local())


SHARED_SECTIONS: dict[str, type] = {
    "heterogeneity": HeterogeneitySettings,
    "init": InitSettings,
    "fl": FLSettings,
    "log": LogSettings,
}


def section_from_mapping(name: str, section_cls: type, values: Any) -> Any:
    """Build section `name` of type `section_cls` from a mapping: unknown or missing keys are errors."""
    require(isinstance(values, Mapping), name, values, "a mapping of settings")
    known = [f.name for f in fields(section_cls)]
    for key in values:
        if key not in known:
            raise SettingError(f"{name}.{key} is not a known setting: allowed "
                               f"{'|'.join(f'{name}.{k}' for k in known)}")
    for f in fields(section_cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values:
            raise SettingError(f"{name}.{f.name} is missing: set it in conf/ or as an override")
    declared = {f.name: f.type for f in fields(section_cls)}
    # Accept an int where a float is declared (YAML writes `1` for 1.0).
    return section_cls(**{k: float(v) if declared[k] in ("float", "float | None") and is_number(v) else v
                           for k, v in values.items()})


def flatten_settings(nested: Mapping[str, Any], prefix: str = "", *, keep_none: bool = True) -> dict[str, Any]:
    """{"init": {"name": "random"}, "seed": 0} -> {"init.name": "random", "seed": 0} (any depth)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_settings(value, f"{name}.", keep_none=keep_none))
        elif keep_none or value is not None:
            flat[name] = value
    return flat
