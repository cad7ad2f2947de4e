"""summary.json: the run's final row, partition facts, wall time, settings and package versions."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from initmatters_core.results import finite_or_none
from initmatters_core.settings import ExperimentSettings
from initmatters_core.tasks import task_name
from initmatters_core.tasks.base import TaskServer

VERSIONED_PACKAGES = ("torch", "flwr", "flwr-datasets", "hydra-core", "numpy", "datasets")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def run_summary(settings: ExperimentSettings, setup: TaskServer, rows: Sequence[Mapping[str, Any]],
                start_round: int | None, wall_time_s: float, plots: list[str]) -> dict[str, Any]:
    """The content of summary.json (start_round: None unless the run resumed)."""
    final_row = rows[-1]
    short_rounds = [int(row["round"]) for row in rows[1:] if row.get("clients") is not None
                    and int(row["clients"]) < len(setup.schedule[int(row["round"]) - 1])]
    return {
        "task": task_name(settings),
        "final": {key: finite_or_none(float(value)) for key, value in final_row.items()},
        "initial_misaligned": rows[0].get("misaligned"),
        "realised_h": setup.realised_h,  # H of partition.json: the paper's h on the binary task
        "facts": setup.facts,  # what the task derived from the settings (e.g. the effective source seed)
        "client_sizes": setup.client_sizes,
        "rounds_completed": int(final_row["round"]),
        "resumed_from_round": start_round,
        "rounds_with_missing_clients": short_rounds,  # fewer replies than scheduled clients (a node failed)
        "wall_time_s": round(wall_time_s, 3),
        "settings": settings.to_dict(),
        "plots": plots,
        "versions": package_versions(),
    }
