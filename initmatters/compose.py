"""Edge: compose conf/ with Hydra overrides into validated `ExperimentSettings`.

This module and the launchers are the only places that touch Hydra; the core receives the
typed settings. Every failure is a one-line `SettingError` naming the setting.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from initmatters_core.settings import ExperimentSettings, SettingError
from initmatters_core.tasks import settings_from_dict
from strategies import check_strategy

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "config"

# `${floordiv:500,${fl.local_steps}}`: presets keep the total number of local steps fixed.
OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b), replace=True)


def split_overrides(overrides: str | Sequence[str]) -> list[str]:
    """Hydra overrides from a shell-style string ("init=pretrained fl.lr=0.1") or a list."""
    return shlex.split(overrides) if isinstance(overrides, str) else list(overrides)


def compose_config(overrides: str | Sequence[str] = ()) -> DictConfig:
    """conf/config.yaml with `overrides` applied (Hydra's compose API, no working-dir change)."""
    items = split_overrides(overrides)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="initmatters"):
            return compose(config_name=CONFIG_NAME, overrides=items)
    except MissingConfigException as error:
        raise SettingError(_missing_option_message(error, items)) from None
    except (HydraException, OmegaConfBaseException) as error:
        raise SettingError(" ".join(str(error).split())) from None


def settings_from_config(config: DictConfig) -> ExperimentSettings:
    """Resolve interpolations and build validated settings from a composed config."""
    try:
        values = OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", "") or "a setting"
        raise SettingError(f"{key} is missing: give it as an override ({key}=...)") from None
    except OmegaConfBaseException as error:
        raise SettingError(" ".join(str(error).split())) from None
    assert isinstance(values, dict)
    settings = settings_from_dict(values)
    check_strategy(settings.strategy)
    return settings


def load_settings(overrides: str | Sequence[str] = ()) -> tuple[ExperimentSettings, str]:
    """Compose, resolve and validate; also returns the resolved config as YAML (config.yaml)."""
    config = compose_config(overrides)
    return settings_from_config(config), OmegaConf.to_yaml(config, resolve=True)


def group_options(group: str) -> list[str]:
    """The option names of a config group (conf/<group>/*.yaml)."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def _missing_option_message(error: MissingConfigException, overrides: list[str]) -> str:
    for item in overrides:
        group, _, option = item.lstrip("+~").partition("=")
        if (CONF_DIR / group).is_dir() and option and option not in group_options(group):
            return f"{group}={option!r} is invalid: allowed {'|'.join(group_options(group))}"
    return " ".join(str(error).split())
