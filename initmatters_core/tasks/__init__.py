"""Tasks are plug-ins: the registry, and settings built for the task their data belongs to.

Adding a task: a package `initmatters_core/tasks/<name>/` with `settings.py` and `task.py` (see
`base`), its conf/ files, and one line in TASK_PACKAGES. A task's `task` module (torch, data
libraries) is imported only when the task runs; validation reads only its `settings` module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from initmatters_core.settings import (
    SHARED_SECTIONS,
    ClientSettings,
    ExperimentSettings,
    HeterogeneitySettings,
    LocalTrainingSettings,
    SettingError,
    StrategySettings,
    require,
    section_from_mapping,
)
from initmatters_core.tasks.base import Task, TaskSettingsModule

TASK_PACKAGES = {
    "synthetic": "initmatters_core.tasks.synthetic",
    "image": "initmatters_core.tasks.image",
}


def task_settings(task: str) -> TaskSettingsModule:
    """The settings module of a registered task."""
    return importlib.import_module(f"{TASK_PACKAGES[task]}.settings")  # type: ignore[return-value]


def task_of_data(data_name: Any) -> str:
    """The registered task whose DATA_NAMES hold `data_name` (one-line SettingError if none)."""
    for task in TASK_PACKAGES:
        if data_name in task_settings(task).DATA_NAMES:
            return task
    allowed = [name for task in TASK_PACKAGES for name in task_settings(task).DATA_NAMES]
    raise SettingError(f"data={data_name!r} is invalid: allowed {'|'.join(allowed)}")


def task_name(settings: ExperimentSettings | ClientSettings) -> str:
    """The task a run's settings belong to (by data.name)."""
    return task_of_data(settings.data.name)


def task_module_name(settings: ExperimentSettings | ClientSettings) -> str:
    """The name of the run's task module (importing it imports the task's numerical stack)."""
    return f"{TASK_PACKAGES[task_name(settings)]}.task"


def load_task(settings: ExperimentSettings | ClientSettings) -> Task:
    """The `task` module of the run's task (imports its numerical stack)."""
    return importlib.import_module(task_module_name(settings))  # type: ignore[return-value]


def _checked_sections(values: Mapping[str, Any], known: tuple[str, ...]) -> TaskSettingsModule:
    """Reject unknown and missing top-level keys; the settings module of the data's task."""
    require(isinstance(values, Mapping), "settings", values, "a mapping of sections")
    for key in values:
        if key not in known:
            raise SettingError(f"{key} is not a known setting: allowed {'|'.join(known)}")
    for key in known:
        if key not in values:
            raise SettingError(f"{key} is missing: set it in conf/ or as an override")
    data, model = values["data"], values["model"]
    require(isinstance(data, Mapping), "data", data, "a mapping of settings")
    require(isinstance(model, Mapping), "model", model, "a mapping of settings")
    spec = task_settings(task_of_data(data.get("name")))
    require(model.get("name") in spec.MODEL_NAMES, "model", model.get("name"),
            f"{'|'.join(spec.MODEL_NAMES)} with data={data.get('name')}")
    return spec


def client_settings_from_dict(values: Mapping[str, Any]) -> ClientSettings:
    """A client's settings from the nested form that travels (`ClientSettings.to_dict`)."""
    spec = _checked_sections(values, ("seed", "data", "heterogeneity", "model", "fl"))
    settings = ClientSettings(
        seed=values["seed"],
        data=section_from_mapping("data", spec.data_section(values["data"]["name"]), values["data"]),
        heterogeneity=section_from_mapping("heterogeneity", HeterogeneitySettings, values["heterogeneity"]),
        model=section_from_mapping("model", spec.model_section(values["model"]["name"]), values["model"]),
        fl=section_from_mapping("fl", LocalTrainingSettings, values["fl"]),
    )
    settings.data.validate()
    settings.model.validate()
    settings.fl.validate()
    return settings


def settings_from_dict(values: Mapping[str, Any]) -> ExperimentSettings:
    """Build and validate settings from the nested conf/ form; unknown or missing keys are errors.

    The data section names the task; the task gives the data and model section types and
    checks what only it knows (its partitions, initializations and settings it cannot honour).
    """
    spec = _checked_sections(values, ("seed", "data", "model", "strategy", *SHARED_SECTIONS))
    data, model = values["data"], values["model"]
    settings = ExperimentSettings(
        seed=values["seed"],
        data=section_from_mapping("data", spec.data_section(data["name"]), data),
        model=section_from_mapping("model", spec.model_section(model["name"]), model),
        strategy=StrategySettings.from_mapping(values["strategy"]),
        **{name: section_from_mapping(name, cls, values[name]) for name, cls in SHARED_SECTIONS.items()},
    )
    settings.validate_shared()
    spec.validate(settings)
    return settings
