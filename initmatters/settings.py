"""Typed, validated experiment settings.

The launchers (Hydra, `flwr run`) turn conf/ into a plain nested dict; everything below them
receives these frozen dataclasses. Every check raises `SettingError` with one line that names
the setting and the allowed values, so a bad run fails before any start-up cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

HETEROGENEITY_SCHEMES = ("iid", "label_skew", "dirichlet", "pathological")
INIT_NAMES = ("random", "pretrained", "align_flip", "misaligned_fraction", "checkpoint")

# Two tasks share the apps, the strategy and the results contract. "synthetic": the paper's
# signal-plus-noise data and two-layer CNN. "image": real images (initmatters.vision).
SYNTHETIC_DATA = "synthetic"
IMAGE_DATASET_NAMES = ("digits", "cifar10", "tinyimagenet")
DATA_NAMES = (SYNTHETIC_DATA, *IMAGE_DATASET_NAMES)
SYNTHETIC_MODEL = "two_layer_cnn"
IMAGE_MODEL_NAMES = ("resnet18", "patch_cnn")
MODEL_NAMES = (SYNTHETIC_MODEL, *IMAGE_MODEL_NAMES)
IMAGE_HETEROGENEITY_SCHEMES = ("iid", "dirichlet", "pathological")
IMAGE_INIT_NAMES = ("random", "imagenet", "proxy_pretrained", "checkpoint")
NORMS = ("batch", "group")
DEVICES = ("cpu", "cuda", "auto")


class SettingError(ValueError):
    """A setting is outside its allowed values; the message is one line naming it."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise SettingError(f"{key}={value!r} is invalid: allowed {allowed}")


def _positive_int(key: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, value,
             "a positive integer")


def _non_negative_int(key: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key, value,
             "an integer >= 0")


def _positive_float(key: str, value: Any) -> None:
    _require(_is_number(value) and value > 0 and math.isfinite(value), key, value,
             "a finite number > 0")


def _unit_interval(key: str, value: Any, *, closed_right: bool = True) -> None:
    ok = _is_number(value) and 0.0 <= value and (value <= 1.0 if closed_right else value < 1.0)
    _require(ok, key, value, "a number in [0, 1]" if closed_right else "a number in [0, 1)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataSettings:
    """Signal-plus-noise data model: x = [y_hat * mu, xi], xi ~ N(0, sigma_p^2 (I - uu^T))."""

    dim: int  # d, the patch dimension
    signal_norm: float  # ||mu||
    noise_std: float  # sigma_p
    label_noise: float  # p, probability that the observed label is flipped
    samples_per_client: int  # n (the mean size for dirichlet/pathological)
    test_samples: int  # balanced fresh test set held by the server
    name: str = SYNTHETIC_DATA

    def validate(self) -> None:
        _require(self.name == SYNTHETIC_DATA, "data.name", self.name, SYNTHETIC_DATA)
        _require(isinstance(self.dim, int) and self.dim >= 2, "data.dim", self.dim,
                 "an integer >= 2")
        _positive_float("data.signal_norm", self.signal_norm)
        _positive_float("data.noise_std", self.noise_std)
        _require(_is_number(self.label_noise) and 0.0 <= self.label_noise < 0.5,
                 "data.label_noise", self.label_noise, "a number in [0, 0.5)")
        _positive_int("data.samples_per_client", self.samples_per_client)
        _require(isinstance(self.test_samples, int) and self.test_samples >= 2
                 and self.test_samples % 2 == 0, "data.test_samples", self.test_samples,
                 "an even integer >= 2")


@dataclass(frozen=True)
class ImageDataSettings:
    """A real image dataset (initmatters.vision.datasets); clients partition its train split."""

    name: str  # one of IMAGE_DATASET_NAMES
    proxy_fraction: float  # share of every class of the train split held back by the server (pre-training)
    test_samples: int  # 0 = the whole test split; > 0 = a seeded stratified subset of that size
    augment: bool  # torchvision v2 training augmentation (random crop + flip; none for digits)
    eval_batch_size: int  # images per forward pass when measuring (memory bound, not the result)
    data_dir: str | None = None  # a local copy (parquet or image folder); None/"" = the Hub

    def validate(self) -> None:
        _require(self.name in IMAGE_DATASET_NAMES, "data.name", self.name, "|".join(DATA_NAMES))
        _unit_interval("data.proxy_fraction", self.proxy_fraction, closed_right=False)
        _non_negative_int("data.test_samples", self.test_samples)
        _require(isinstance(self.augment, bool), "data.augment", self.augment, "true|false")
        _positive_int("data.eval_batch_size", self.eval_batch_size)
        _require(self.data_dir is None or isinstance(self.data_dir, str), "data.data_dir", self.data_dir,
                 "a folder path or empty")


@dataclass(frozen=True)
class HeterogeneitySettings:
    """How labels are spread over clients (features always follow one law)."""

    name: str  # one of HETEROGENEITY_SCHEMES
    h: float | None = None  # label_skew: mean |n+ - n-| / n over clients, in [0, 1]
    alpha: float | None = None  # dirichlet concentration
    classes_per_client: int | None = None  # pathological: distinct labels per client
    min_partition_size: int | None = None  # dirichlet: resample until every client has this many

    def validate(self, num_clients: int, samples_per_client: int | None) -> None:
        """samples_per_client: n of the synthetic task; None for image datasets (any number of classes)."""
        if samples_per_client is None:
            self._validate_image()
            return
        _require(self.name in HETEROGENEITY_SCHEMES, "heterogeneity", self.name,
                 "|".join(HETEROGENEITY_SCHEMES))
        if self.name == "label_skew":
            _unit_interval("heterogeneity.h", self.h)
            _require(num_clients % 2 == 0, "fl.num_clients", num_clients,
                     "an even number with heterogeneity=label_skew (clients alternate majority label)")
        if self.name == "dirichlet":
            _positive_float("heterogeneity.alpha", self.alpha)
            _non_negative_int("heterogeneity.min_partition_size", self.min_partition_size)
            _require(self.min_partition_size <= samples_per_client,
                     "heterogeneity.min_partition_size", self.min_partition_size,
                     f"an integer in [0, data.samples_per_client={samples_per_client}]")
        if self.name == "pathological":
            _require(self.classes_per_client in (1, 2), "heterogeneity.classes_per_client",
                     self.classes_per_client, "1 or 2 (binary task)")

    def _validate_image(self) -> None:
        _require(self.name in IMAGE_HETEROGENEITY_SCHEMES, "heterogeneity", self.name,
                 f"{'|'.join(IMAGE_HETEROGENEITY_SCHEMES)} with image data (label_skew is the binary task's)")
        if self.name == "dirichlet":
            _positive_float("heterogeneity.alpha", self.alpha)
            _non_negative_int("heterogeneity.min_partition_size", self.min_partition_size)
        if self.name == "pathological":
            _positive_int("heterogeneity.classes_per_client", self.classes_per_client)


@dataclass(frozen=True)
class ModelSettings:
    """Two-layer ReLU CNN: 2 x m filters in R^d, fixed second layer +-1/m."""

    filters_per_class: int  # m
    init_std: float  # sigma_0 of the random initialization
    name: str = SYNTHETIC_MODEL

    def validate(self) -> None:
        _require(self.name == SYNTHETIC_MODEL, "model", self.name,
                 f"{SYNTHETIC_MODEL} with data=synthetic ({'|'.join(IMAGE_MODEL_NAMES)} need image data)")
        _positive_int("model.filters_per_class", self.filters_per_class)
        _positive_float("model.init_std", self.init_std)


@dataclass(frozen=True)
class ImageModelSettings:
    """A model of the image task: torchvision ResNet18 or the multi-class patch CNN."""

    name: str  # one of IMAGE_MODEL_NAMES
    norm: str | None = None  # resnet18: batch|group
    cifar_stem: bool | None = None  # resnet18: 3x3 stride-1 stem without max-pool
    patch_size: int | None = None  # patch_cnn: side of the non-overlapping square patches
    filters_per_class: int | None = None  # patch_cnn: m
    init_std: float | None = None  # patch_cnn: sigma_0 of the random initialization

    def validate(self) -> None:
        _require(self.name in IMAGE_MODEL_NAMES, "model", self.name,
                 f"{'|'.join(IMAGE_MODEL_NAMES)} with image data ({SYNTHETIC_MODEL} needs data=synthetic)")
        if self.name == "resnet18":
            _require(self.norm in NORMS, "model.norm", self.norm, "|".join(NORMS))
            _require(isinstance(self.cifar_stem, bool), "model.cifar_stem", self.cifar_stem, "true|false")
        if self.name == "patch_cnn":
            _positive_int("model.patch_size", self.patch_size)
            _positive_int("model.filters_per_class", self.filters_per_class)
            _positive_float("model.init_std", self.init_std)


@dataclass(frozen=True)
class InitSettings:
    """Initialization of the global model before round 1."""

    name: str  # one of INIT_NAMES
    steps: int | None = None  # pretrained: centralized GD steps
    lr: float | None = None  # pretrained: GD learning rate
    source_samples: int | None = None  # pretrained: size of the server's balanced source set
    source_seed: int | None = None  # pretrained: seed of the source set (independent of clients' data)
    source_noise_std: float | None = None  # pretrained: sigma_p of the source data
    misaligned_fraction: float | None = None  # misaligned_fraction: q, per class
    path: str | None = None  # checkpoint: a saved state dict; imagenet: the weights file ("" = download)

    def validate(self, image_task: bool = False, model_name: str = SYNTHETIC_MODEL) -> None:
        if image_task:
            self._validate_image(model_name)
            return
        _require(self.name in INIT_NAMES, "init", self.name,
                 f"{'|'.join(INIT_NAMES)} with data=synthetic")
        if self.name == "pretrained":
            _non_negative_int("init.steps", self.steps)
            _positive_float("init.lr", self.lr)
            _require(isinstance(self.source_samples, int) and self.source_samples >= 2
                     and self.source_samples % 2 == 0, "init.source_samples",
                     self.source_samples, "an even integer >= 2")
            _non_negative_int("init.source_seed", self.source_seed)
            _positive_float("init.source_noise_std", self.source_noise_std)
        if self.name == "misaligned_fraction":
            _unit_interval("init.misaligned_fraction", self.misaligned_fraction)
        if self.name == "checkpoint":
            _require(isinstance(self.path, str) and self.path != "", "init.path", self.path,
                     "the path of a saved state dict (e.g. a run's model_final.pt)")

    def _validate_image(self, model_name: str) -> None:
        _require(self.name in IMAGE_INIT_NAMES, "init", self.name, f"{'|'.join(IMAGE_INIT_NAMES)} with image data")
        if self.name == "imagenet":
            _require(model_name == "resnet18", "init", self.name,
                     f"random|proxy_pretrained|checkpoint with model={model_name} (imagenet needs model=resnet18)")
            _require(self.path is None or isinstance(self.path, str), "init.path", self.path,
                     "a ResNet18 ImageNet state dict file, or empty to use torchvision's download")
        if self.name == "proxy_pretrained":
            _non_negative_int("init.steps", self.steps)
            _positive_float("init.lr", self.lr)
        if self.name == "checkpoint":
            _require(isinstance(self.path, str) and self.path != "", "init.path", self.path,
                     "the path of a saved state dict (e.g. a run's model_final.pt)")


@dataclass(frozen=True)
class FLSettings:
    """FedAvg: rounds, clients, local (S)GD."""

    num_clients: int  # K
    num_rounds: int
    local_steps: int  # tau
    lr: float  # eta
    batch_size: int  # 0 = full-batch GD; > 0 = mini-batch SGD of that size
    fraction_train: float  # share of clients sampled per round
    wait_for_nodes_s: float  # how long the server waits for the SuperNodes to connect
    local_epochs: int  # > 0: local_epochs passes over the client's data replace local_steps
    momentum: float  # SGD momentum (0 = plain (S)GD, the paper's update)
    weight_decay: float  # L2 penalty of SGD
    device: str  # cpu|cuda|auto (auto = cuda when available) for local training and server measurements

    def validate(self) -> None:
        _positive_int("fl.num_clients", self.num_clients)
        _non_negative_int("fl.num_rounds", self.num_rounds)
        _positive_int("fl.local_steps", self.local_steps)
        _positive_float("fl.lr", self.lr)
        _non_negative_int("fl.batch_size", self.batch_size)
        _require(_is_number(self.fraction_train) and 0.0 < self.fraction_train <= 1.0,
                 "fl.fraction_train", self.fraction_train, "a number in (0, 1]")
        _positive_float("fl.wait_for_nodes_s", self.wait_for_nodes_s)
        _non_negative_int("fl.local_epochs", self.local_epochs)
        _require(_is_number(self.momentum) and 0.0 <= self.momentum < 1.0, "fl.momentum", self.momentum,
                 "a number in [0, 1)")
        _require(_is_number(self.weight_decay) and self.weight_decay >= 0.0 and math.isfinite(self.weight_decay),
                 "fl.weight_decay", self.weight_decay, "a finite number >= 0")
        _require(self.device in DEVICES, "fl.device", self.device, "|".join(DEVICES))


@dataclass(frozen=True)
class LogSettings:
    """What the server records besides the always-on metrics."""

    noise_memorization: bool  # clients report rho statistics (needs w(0) in each message)
    plots: bool

    def validate(self) -> None:
        _require(isinstance(self.noise_memorization, bool), "log.noise_memorization",
                 self.noise_memorization, "true|false")
        _require(isinstance(self.plots, bool), "log.plots", self.plots, "true|false")


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything one run needs; built from the composed conf/ by `from_dict`."""

    seed: int
    data: DataSettings | ImageDataSettings
    heterogeneity: HeterogeneitySettings
    model: ModelSettings | ImageModelSettings
    init: InitSettings
    fl: FLSettings
    log: LogSettings

    @property
    def image_task(self) -> bool:
        """True for real image data (initmatters.vision), False for the synthetic task."""
        return isinstance(self.data, ImageDataSettings)

    def validate(self) -> ExperimentSettings:
        _non_negative_int("seed", self.seed)
        self.data.validate()
        self.fl.validate()
        image = self.image_task
        if image != isinstance(self.model, ImageModelSettings):
            allowed = "|".join(IMAGE_MODEL_NAMES) if image else SYNTHETIC_MODEL
            raise SettingError(f"model={self.model.name} is invalid with data={self.data.name}: allowed {allowed}")
        self.heterogeneity.validate(self.fl.num_clients, None if image else self.data.samples_per_client)
        self.model.validate()
        self.init.validate(image, self.model.name)
        self.log.validate()
        if image and self.init.name == "proxy_pretrained":
            _require(self.data.proxy_fraction > 0, "data.proxy_fraction", self.data.proxy_fraction,
                     "a number in (0, 1) with init=proxy_pretrained (the server pre-trains on that share)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExperimentSettings:
        """Build and validate from a nested dict; unknown keys are errors, not silently dropped."""
        _reject_unknown("", values, {f.name: None for f in fields(cls)})
        _reject_missing("", values, cls)
        kwargs: dict[str, Any] = {"seed": values["seed"]}
        for name in _SECTION_TYPES:
            section = values[name]
            _require(isinstance(section, Mapping), name, section, "a mapping of settings")
            section_cls = _section_type(name, section)
            _reject_unknown(f"{name}.", section, {f.name: None for f in fields(section_cls)})
            _reject_missing(f"{name}.", section, section_cls)
            kwargs[name] = section_cls(**_coerce_numbers(section_cls, section))
        return cls(**kwargs).validate()


_SECTION_TYPES: dict[str, type] = {
    "data": DataSettings,
    "heterogeneity": HeterogeneitySettings,
    "model": ModelSettings,
    "init": InitSettings,
    "fl": FLSettings,
    "log": LogSettings,
}


def _section_type(name: str, section: Mapping[str, Any]) -> type:
    """The dataclass of a section; data and model depend on their `name` (the task)."""
    if name == "data":
        data_name = section.get("name", SYNTHETIC_DATA)
        _require(data_name in DATA_NAMES, "data.name", data_name, "|".join(DATA_NAMES))
        return DataSettings if data_name == SYNTHETIC_DATA else ImageDataSettings
    if name == "model":
        model_name = section.get("name", SYNTHETIC_MODEL)
        _require(model_name in MODEL_NAMES, "model", model_name, "|".join(MODEL_NAMES))
        return ModelSettings if model_name == SYNTHETIC_MODEL else ImageModelSettings
    return _SECTION_TYPES[name]


def _reject_unknown(prefix: str, values: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    for key in values:
        if key not in known:
            raise SettingError(f"{prefix}{key} is not a known setting: allowed "
                               f"{'|'.join(prefix + k for k in known)}")


def _reject_missing(prefix: str, values: Mapping[str, Any], section_cls: type) -> None:
    for f in fields(section_cls):
        required = f.default is MISSING and f.default_factory is MISSING
        if required and f.name not in values:
            raise SettingError(f"{prefix}{f.name} is missing: set it in conf/ or as an override")


def _coerce_numbers(section_cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Accept an int where a float is declared (YAML writes `1` for 1.0)."""
    declared = {f.name: f.type for f in fields(section_cls)}
    return {k: float(v) if declared[k] in ("float", "float | None") and _is_number(v) else v
            for k, v in values.items()}
