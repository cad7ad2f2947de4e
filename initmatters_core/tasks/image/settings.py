"""Settings of the image task: real images, ResNet18 or the multi-class patch CNN.

Torch-free (validation must not import the numerical stack). The registry
(`initmatters_core.tasks`) reads DATA_NAMES, MODEL_NAMES, the section types and `validate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from initmatters_core.settings import (
    ExperimentSettings,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
    require,
    unit_interval,
)

DATA_NAMES = ("digits", "cifar10", "tinyimagenet")
MODEL_NAMES = ("resnet18", "patch_cnn")
HETEROGENEITY_SCHEMES = ("iid", "dirichlet", "pathological")
INIT_NAMES = ("random", "imagenet", "proxy_pretrained", "checkpoint")
NORMS = ("batch", "group")


@dataclass(frozen=True)
class ImageDataSettings:
    """A real image dataset (initmatters_core.tasks.image.datasets); clients partition its train split."""

    name: str  # one of DATA_NAMES
    proxy_fraction: float  # share of every class of the train split held back by the server (pre-training)
    test_samples: int  # 0 = the whole test split; > 0 = a seeded stratified subset of that size
    augment: bool  # torchvision v2 training augmentation (random crop + flip; none for digits)
    eval_batch_size: int  # images per forward pass when measuring (memory bound, not the result)
    data_dir: str | None = None  # a local copy (parquet or image folder); None/"" = the Hub

    def validate(self) -> None:
        unit_interval("data.proxy_fraction", self.proxy_fraction, closed_right=False)
        non_negative_int("data.test_samples", self.test_samples)
        require(isinstance(self.augment, bool), "data.augment", self.augment, "true|false")
        positive_int("data.eval_batch_size", self.eval_batch_size)
        require(self.data_dir is None or isinstance(self.data_dir, str), "data.data_dir", self.data_dir,
                "a folder path or empty")


@dataclass(frozen=True)
class ImageModelSettings:
    """A model of the image task: torchvision ResNet18 or the multi-class patch CNN."""

    name: str  # one of MODEL_NAMES
    norm: str | None = None  # resnet18: batch|group
    cifar_stem: bool | None = None  # resnet18: 3x3 stride-1 stem without max-pool
    patch_size: int | None = None  # patch_cnn: side of the non-overlapping square patches
    filters_per_class: int | None = None  # patch_cnn: m
    init_std: float | None = None  # patch_cnn: sigma_0 of the random initialization

    def validate(self) -> None:
        if self.name == "resnet18":
            one_of("model.norm", self.norm, NORMS)
            require(isinstance(self.cifar_stem, bool), "model.cifar_stem", self.cifar_stem, "true|false")
        if self.name == "patch_cnn":
            positive_int("model.patch_size", self.patch_size)
            positive_int("model.filters_per_class", self.filters_per_class)
            positive_float("model.init_std", self.init_std)


def model_section(name: str) -> type:
    """The model section type of `name` (one of MODEL_NAMES)."""
    return ImageModelSettings


def data_section(name: str) -> type:
    """The data section type of `name` (one of DATA_NAMES)."""
    return ImageDataSettings


def validate(settings: ExperimentSettings) -> None:
    """What only the image task checks: its partitions and initializations."""
    heterogeneity = settings.heterogeneity
    heterogeneity.validate(HETEROGENEITY_SCHEMES, "with image data (label_skew is the binary task's)")
    for key, value in (("heterogeneity.noise_skew", heterogeneity.noise_skew),
                       ("heterogeneity.signal_skew", heterogeneity.signal_skew)):
        require(value == 0, key, value, "0 with image data (noise and signal skews exist on the synthetic task only)")
    init, model = settings.init, settings.model
    init.validate(INIT_NAMES, "with image data")
    if init.name == "imagenet":
        require(model.name == "resnet18", "init", init.name,
                f"random|proxy_pretrained|checkpoint with model={model.name} (imagenet needs model=resnet18)")
        require(init.path is None or isinstance(init.path, str), "init.path", init.path,
                "a ResNet18 ImageNet state dict file, or empty to use torchvision's download")
    if init.name == "proxy_pretrained":
        non_negative_int("init.steps", init.steps)
        positive_float("init.lr", init.lr)
        require(settings.data.proxy_fraction > 0, "data.proxy_fraction", settings.data.proxy_fraction,
                "a number in (0, 1) with init=proxy_pretrained (the server pre-trains on that share)")
