"""Every conf/ file composes; every bad setting fails early with a one-line message naming it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from initmatters.compose import CONF_DIR
from initmatters.protocol import config_to_settings, settings_to_config
from initmatters_core.settings import ExperimentSettings, SettingError, client_settings
from initmatters_core.tasks import settings_from_dict, task_name
from initmatters_core.tasks.image.settings import INIT_NAMES as IMAGE_INIT_NAMES
from initmatters_core.tasks.synthetic.settings import INIT_NAMES

GROUPS = ("data", "model", "init", "heterogeneity", "fl", "strategy", "debug")
IMAGE = "data=digits model=patch_cnn heterogeneity=dirichlet"
# Options that need an extra override to be complete, or the image task around them.
EXTRA = {
    ("init", "checkpoint"): "init.path=/x",
    ("data", "digits"): "model=patch_cnn heterogeneity=dirichlet",
    ("data", "cifar10"): "model=resnet18 heterogeneity=dirichlet",
    ("data", "tinyimagenet"): "model=resnet18 heterogeneity=dirichlet",
    ("model", "patch_cnn"): "data=digits heterogeneity=dirichlet",
    ("model", "resnet18"): "data=cifar10 heterogeneity=iid",
    ("init", "imagenet"): "data=cifar10 model=resnet18 heterogeneity=dirichlet",
    ("init", "proxy_pretrained"): IMAGE,
}

GROUP_OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((Path(__file__).resolve().parent.parent / "conf" / group).glob("*.yaml"))
]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_every_group_has_options() -> None:
    assert CONF_DIR == Path(__file__).resolve().parent.parent / "conf"
    for group in GROUPS:
        assert any(g == group for g, _ in GROUP_OPTIONS), group
    assert ("init", "pretrained") in GROUP_OPTIONS
    assert {option for g, option in GROUP_OPTIONS if g == "init"} == set(INIT_NAMES) | set(IMAGE_INIT_NAMES)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes(compose_settings, group: str, option: str) -> None:
    overrides = f"{group}={option} {EXTRA.get((group, option), '')}"
    settings, resolved = compose_settings(overrides)
    assert isinstance(settings, ExperimentSettings)
    values = yaml.safe_load(resolved)
    assert "???" not in resolved and "${" not in resolved  # fully resolved
    if group == "init":
        assert settings.init.name == option == values["init"]["name"]
    if group == "heterogeneity":
        assert option.startswith(settings.heterogeneity.name)
    if group == "debug":
        assert settings.fl.num_rounds == values["fl"]["num_rounds"]
    # The resolved YAML is the same configuration as the typed settings.
    assert settings_from_dict(values) == settings


def test_every_experiment_composes(compose_settings) -> None:
    assert len(EXPERIMENTS) >= 4
    for name in EXPERIMENTS:
        settings, _ = compose_settings(f"experiment={name}")
        assert isinstance(settings, ExperimentSettings)
        small, _ = compose_settings(f"experiment={name} debug=default")  # debug wins over the preset
        assert (small.fl.num_clients, small.fl.num_rounds) == (2, 2)
        if task_name(small) == "synthetic":
            assert small.data.dim == 100


def test_overrides_reach_settings(compose_settings) -> None:
    settings, _ = compose_settings("init=pretrained fl.lr=0.25 heterogeneity.h=1 seed=3 data.noise_std=2")
    assert settings.fl.lr == 0.25
    assert settings.init.lr == 0.25  # interpolated from fl.lr
    assert settings.init.source_noise_std == 2.0  # interpolated from data.noise_std
    assert settings.heterogeneity.h == 1.0 and isinstance(settings.heterogeneity.h, float)
    assert settings.seed == 3


BAD = [
    ("heterogeneity.h=1.5", "heterogeneity.h"),
    ("heterogeneity.h=-0.1", "heterogeneity.h"),
    ("fl.num_clients=3", "fl.num_clients"),
    ("fl.lr=0", "fl.lr"),
    ("fl.lr=-1", "fl.lr"),
    ("fl.local_steps=0", "fl.local_steps"),
    ("data.label_noise=0.6", "data.label_noise"),
    ("init=checkpoint", "init.path"),
    ("heterogeneity=dirichlet heterogeneity.alpha=0", "heterogeneity.alpha"),
    ("fl.fraction_train=0", "fl.fraction_train"),
    ("fl.fraction_train=1.5", "fl.fraction_train"),
    ("fl.bogus=1", "fl.bogus"),
    ("+fl.bogus=1", "fl.bogus"),
    ("seed=-1", "seed"),
    ("data.test_samples=3", "data.test_samples"),
    ("data.population_samples=-1", "data.population_samples"),
    ("data.population_samples=0.5", "data.population_samples"),
    ("data.dim=1", "data.dim"),
    ("fl.num_rounds=1.5", "fl.num_rounds"),
    ("model.init_std=0", "model.init_std"),
    ("init=misaligned_fraction init.misaligned_fraction=2", "init.misaligned_fraction"),
    ("heterogeneity=pathological heterogeneity.classes_per_client=3", "heterogeneity.classes_per_client"),
    ("init=pretrained init.source_samples=5", "init.source_samples"),
    ("log.plots=maybe", "log.plots"),
    ("log.tensorboard=1", "log.tensorboard"),
    ("log.wandb=yes", "log.wandb"),
    ("log.wandb_project=a:b", "log.wandb_project"),
    ("fl.momentum=1.0", "fl.momentum"),
    ("fl.weight_decay=-1", "fl.weight_decay"),
    ("fl.local_epochs=-1", "fl.local_epochs"),
    ("fl.device=tpu", "fl.device"),
    ("data=digits model=two_layer_cnn heterogeneity=dirichlet", "model='two_layer_cnn'"),
    ("model=resnet18", "model='resnet18'"),
    ("data=digits model=patch_cnn heterogeneity=label_skew", "heterogeneity"),
    ("strategy=fedprox strategy.proximal_mu=x", "strategy.proximal_mu"),
    ("+strategy.nonsense=1", "strategy.nonsense"),
    ("data=digits model=patch_cnn heterogeneity=iid init=pretrained", "data.noise_std"),
    ("data=digits model=patch_cnn heterogeneity=iid init=align_flip", "init"),
    ("data=digits model=patch_cnn heterogeneity=iid init=imagenet", "init"),
    ("data=digits model=patch_cnn heterogeneity=iid init=proxy_pretrained data.proxy_fraction=0",
     "data.proxy_fraction"),
    ("data=digits model=patch_cnn heterogeneity=iid model.patch_size=0", "model.patch_size"),
    ("data=digits model=resnet18 heterogeneity=iid model.norm=layer", "model.norm"),
    ("data=digits model=patch_cnn heterogeneity=pathological heterogeneity.classes_per_client=0",
     "heterogeneity.classes_per_client"),
    ("data=digits model=patch_cnn heterogeneity=iid data.proxy_fraction=1", "data.proxy_fraction"),
    ("data=digits model=patch_cnn heterogeneity=iid init=checkpoint", "init.path"),
    ("data=cifar10 model=resnet18 heterogeneity=iid +data.dim=3", "data.dim"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[o for o, _ in BAD])
def test_bad_settings_raise_one_line_naming_the_key(compose_settings, overrides: str, key: str) -> None:
    with pytest.raises(SettingError) as error:
        compose_settings(overrides)
    message = str(error.value)
    assert "\n" not in message
    assert key in message


def test_unknown_init_lists_allowed_options(compose_settings) -> None:
    with pytest.raises(SettingError) as error:
        compose_settings("init=foo")
    message = str(error.value)
    assert "\n" not in message
    assert "init" in message and "foo" in message
    for option in INIT_NAMES:
        assert option in message


def test_from_dict_roundtrip(small_settings) -> None:
    settings, _ = small_settings
    assert settings_from_dict(settings.to_dict()) == settings


def test_from_dict_rejects_unknown_and_missing_keys(small_settings) -> None:
    settings, _ = small_settings
    base = settings.to_dict()

    def expect_error(values: dict, key: str) -> None:
        with pytest.raises(SettingError) as error:
            settings_from_dict(values)
        assert key in str(error.value) and "\n" not in str(error.value)

    extra_top = copy.deepcopy(base)
    extra_top["extra"] = 1
    expect_error(extra_top, "extra")
    extra_section = copy.deepcopy(base)
    extra_section["data"]["colour"] = "red"
    expect_error(extra_section, "data.colour")
    missing_field = copy.deepcopy(base)
    del missing_field["fl"]["lr"]
    expect_error(missing_field, "fl.lr")
    missing_section = copy.deepcopy(base)
    del missing_section["model"]
    expect_error(missing_section, "model")
    missing_seed = copy.deepcopy(base)
    del missing_seed["seed"]
    expect_error(missing_seed, "seed")
    not_mapping = copy.deepcopy(base)
    not_mapping["fl"] = 3
    expect_error(not_mapping, "fl")


def test_from_dict_accepts_int_for_float(small_settings) -> None:
    values = small_settings[0].to_dict()
    values["fl"]["lr"] = 1
    values["data"]["signal_norm"] = 2
    settings = settings_from_dict(values)
    assert settings.fl.lr == 1.0 and isinstance(settings.fl.lr, float)
    assert settings.data.signal_norm == 2.0 and isinstance(settings.data.signal_norm, float)


@pytest.mark.parametrize("overrides", [
    "debug=default",
    "init=pretrained heterogeneity.h=0.5",
    "heterogeneity=dirichlet init=misaligned_fraction",
    "heterogeneity=pathological fl.batch_size=4 fl.fraction_train=0.5",
    "init=checkpoint init.path=/x/model_final.pt strategy=fedadam",
    "data=digits model=patch_cnn heterogeneity=dirichlet",
])
def test_client_settings_travel_and_come_back(compose_settings, overrides: str) -> None:
    settings, _ = compose_settings(overrides)
    flat = settings_to_config(client_settings(settings))
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["seed"] == settings.seed
    assert flat["fl.lr"] == settings.fl.lr
    assert all("." in key for key in flat if key != "seed")
    # server-only settings stay on the server
    assert not any(key.startswith(("init.", "log.", "strategy.")) for key in flat)
    assert not {"fl.wait_for_nodes_s", "fl.num_rounds", "fl.fraction_train"} & set(flat)
    assert config_to_settings({**flat, "server-round": 3}) == client_settings(settings)
