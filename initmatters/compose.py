"""Edge: compose conf/ with Hydra overrides into validated `ExperimentSettings`.

This module and the launchers are the only places that touch Hydra; the core receives the
typed settings. Every failure is a one-line `SettingError` naming the setting.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
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


def override_key(item: str) -> str:
    """The setting an override names: "+fl.lr=0.1" -> "fl.lr"."""
    return item.lstrip("+~").partition("=")[0]


PATH_SETTINGS = ("init.path", "data.data_dir")  # files and folders named in settings


def absolute_path_overrides(overrides: Sequence[str], cwd: Path) -> list[str]:
    """`overrides` with every relative PATH_SETTINGS value made absolute against `cwd`.

    A run's ServerApp and SuperNodes work in other folders (the SuperLink's, the node's); an
    absolute path is also what config.yaml should record.
    """
    items = []
    for item in overrides:
        key, equals, value = item.partition("=")
        if equals and key.lstrip("+~") in PATH_SETTINGS and value and not Path(value).expanduser().is_absolute():
            item = f"{key}={(cwd / Path(value).expanduser()).resolve()}"
        items.append(item)
    return items


def reject_duplicates(items: Sequence[str]) -> None:
    """One-line SettingError when two overrides name the same setting (the later would win silently)."""
    seen: dict[str, str] = {}
    for item in items:
        key = override_key(item)
        if key in seen:
            raise SettingError(f"{key} is given twice ({seen[key]}, {item}): give each setting once")
        seen[key] = item


def compose_config(overrides: str | Sequence[str] = ()) -> DictConfig:
    """conf/config.yaml with `overrides` applied (Hydra's compose API, no working-dir change)."""
    items = split_overrides(overrides)
    reject_duplicates(items)
    try:
        return _compose(items)
    except (HydraException, OmegaConfBaseException) as error:
        raise SettingError(composition_problem(error, items)) from None


def composition_problem(error: HydraException | OmegaConfBaseException, items: list[str]) -> str:
    """One line for an error Hydra raised composing conf/ with `items`: the setting and what is allowed."""
    if isinstance(error, MissingConfigException):
        return _missing_option_message(error, items)
    return (_unknown_key_message(str(error), items) or override_syntax_problem(items)
            or " ".join(str(error).split()))


def override_syntax_problem(items: Sequence[str]) -> str | None:
    """The one-line problem with the first override Hydra's grammar rejects (None if all parse)."""
    parser = OverridesParser.create()
    for item in items:
        try:
            parser.parse_overrides([item])
        except OverrideParseException as error:
            reason = "; ".join(line for line in str(error).splitlines()
                               if line.strip() and not line.startswith(("See ", "Error parsing override")))
            return f"{item} is invalid: allowed <setting>=<value> in Hydra's override syntax ({reason})"
    return None


def _compose(items: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="initmatters"):
        return compose(config_name=CONFIG_NAME, overrides=items)


def _unknown_key_message(error: str, items: list[str]) -> str | None:
    """For Hydra's "Could not override 'a.b'" (whose hint `+a.b=...` would only fail later): one line
    naming the setting and the settings its section has, with the other overrides applied."""
    match = re.search(r"Could not override '([\w.]+)'", error)
    if not match:
        return None
    key = match.group(1)
    section, _, _ = key.rpartition(".")
    others = [item for item in items if override_key(item) != key]
    try:
        node = OmegaConf.select(_compose(others), section) if section else _compose(others)
    except (HydraException, OmegaConfBaseException):
        node = None
    if not isinstance(node, DictConfig):
        return f"{key} is not a known setting"
    allowed = "|".join(f"{section}.{name}" if section else str(name) for name in node)
    choice = node.get("name") if section else None
    where = f" of {section}={choice}" if isinstance(choice, str) else ""
    return f"{key} is not a known setting{where}: allowed {allowed}"


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
