"""Settings of the synthetic task: the paper's signal-plus-noise data and two-layer ReLU CNN.

Torch-free (validation must not import the numerical stack). The registry
(`initmatters_core.tasks`) reads DATA_NAMES, MODEL_NAMES, the section types and `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from initmatters_core.settings import (
    ExperimentSettings,
    InitSettings,
    is_number,
    non_negative_int,
    positive_float,
    positive_int,
    require,
    unit_interval,
)

DATA_NAMES = ("synthetic",)
MODEL_NAMES = ("two_layer_cnn",)
HETEROGENEITY_SCHEMES = ("label_skew", "iid", "dirichlet", "pathological")
INIT_NAMES = ("random", "pretrained", "federated_pretrained", "align_flip", "misaligned_fraction", "checkpoint")
DEFAULT_MODEL = "two_layer_cnn"


@dataclass(frozen=True)
class DataSettings:
    """Signal-plus-noise data model: x = [y_hat * mu, xi], xi ~ N(0, sigma_p^2 (I - uu^T))."""

    dim: int  # d, the patch dimension
    signal_norm: float  # ||mu||
    noise_std: float  # sigma_p
    label_noise: float  # p, probability that the observed label is flipped
    samples_per_client: int  # n (the mean size for dirichlet/pathological)
    test_samples: int  # balanced fresh test set held by the server
    population_samples: int  # Gaussian draws of the population test error/loss; 0 = not measured
    name: str = "synthetic"

    def validate(self) -> None:
        require(isinstance(self.dim, int) and not isinstance(self.dim, bool) and self.dim >= 2, "data.dim", self.dim,
                "an integer >= 2")
        positive_float("data.signal_norm", self.signal_norm)
        positive_float("data.noise_std", self.noise_std)
        require(is_number(self.label_noise) and 0.0 <= self.label_noise < 0.5,
                "data.label_noise", self.label_noise, "a number in [0, 0.5)")
        positive_int("data.samples_per_client", self.samples_per_client)
        require(isinstance(self.test_samples, int) and self.test_samples >= 2 and self.test_samples % 2 == 0,
                "data.test_samples", self.test_samples, "an even integer >= 2")
        non_negative_int("data.population_samples", self.population_samples)


@dataclass(frozen=True)
class ModelSettings:
    """Two-layer ReLU CNN: 2 x m filters in R^d, fixed second layer +-1/m."""

    filters_per_class: int  # m
    init_std: float  # sigma_0 of the random initialization
    name: str = "two_layer_cnn"

    def validate(self) -> None:
        positive_int("model.filters_per_class", self.filters_per_class)
        positive_float("model.init_std", self.init_std)


def model_section(name: str) -> type:
    """The model section type of `name` (one of MODEL_NAMES)."""
    return ModelSettings


def data_section(name: str) -> type:
    """The data section type of `name` (one of DATA_NAMES)."""
    return DataSettings


def validate_source(init: InitSettings) -> None:
    """Checks of (federated) pre-training: the optimizer, the source data and the source federation."""
    non_negative_int("init.steps", init.steps)
    positive_float("init.lr", init.lr)
    require(isinstance(init.source_samples, int) and not isinstance(init.source_samples, bool)
            and init.source_samples >= 2 and init.source_samples % 2 == 0,
            "init.source_samples", init.source_samples, "an even integer >= 2")
    if init.source_seed is not None:
        non_negative_int("init.source_seed", init.source_seed)
    positive_float("init.source_noise_std", init.source_noise_std)
    require(is_number(init.source_label_noise) and 0.0 <= init.source_label_noise < 0.5,
            "init.source_label_noise", init.source_label_noise, "a number in [0, 0.5)")
    require(is_number(init.source_signal_angle) and 0.0 <= init.source_signal_angle <= 180.0,
            "init.source_signal_angle", init.source_signal_angle, "a number of degrees in [0, 180]")
    positive_float("init.source_signal_norm", init.source_signal_norm)
    if init.name != "federated_pretrained":
        return
    k = init.source_clients
    require(isinstance(k, int) and not isinstance(k, bool) and (k == 1 or (k >= 2 and k % 2 == 0)),
            "init.source_clients", k, "1 or an even integer >= 2 (source clients alternate majority label)")
    require(init.source_samples % k == 0, "init.source_samples", init.source_samples,
            f"an even integer >= 2 divisible by init.source_clients={k}")
    unit_interval("init.source_h", init.source_h)
    require(k > 1 or init.source_h == 0, "init.source_h", init.source_h,
            "0 with init.source_clients=1 (one client holds the whole balanced source set)")
    positive_int("init.source_rounds", init.source_rounds)


def validate(settings: ExperimentSettings) -> None:
    """What only the synthetic task checks: its partitions and initializations."""
    heterogeneity, init, fl = settings.heterogeneity, settings.init, settings.fl
    heterogeneity.validate(HETEROGENEITY_SCHEMES)
    for key, value in (("heterogeneity.noise_skew", heterogeneity.noise_skew),
                       ("heterogeneity.signal_skew", heterogeneity.signal_skew)):
        require(value == 0 or fl.num_clients >= 2, key, value,
                "0 with fl.num_clients=1 (a skew spreads the clients' factors around 1)")
    if heterogeneity.name == "label_skew":
        require(fl.num_clients % 2 == 0, "fl.num_clients", fl.num_clients,
                "an even number with heterogeneity=label_skew (clients alternate majority label)")
    if heterogeneity.name == "dirichlet":
        n = settings.data.samples_per_client
        require(heterogeneity.min_partition_size <= n, "heterogeneity.min_partition_size",
                heterogeneity.min_partition_size, f"an integer in [1, data.samples_per_client={n}]")
    if heterogeneity.name == "pathological":
        require(heterogeneity.classes_per_client in (1, 2), "heterogeneity.classes_per_client",
                heterogeneity.classes_per_client, "1 or 2 (binary task)")
    init.validate(INIT_NAMES, "with data=synthetic")
    if init.name in ("pretrained", "federated_pretrained"):
        validate_source(init)
    if init.name == "misaligned_fraction":
        f = init.misaligned_fraction
        require(is_number(f) and 0.0 <= f <= 1.0, "init.misaligned_fraction", f, "a number in [0, 1]")
