"""Shared fixtures: the real conf/ composed with Hydra overrides, offline and without telemetry."""

from __future__ import annotations

import os

# Set before anything imports flwr / datasets / huggingface_hub: no network, no telemetry.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Plain progress lines, as in CI, even under `pytest -s` on a terminal (tests of the bar set it themselves).
os.environ["INITMATTERS_PROGRESS"] = "plain"

from collections.abc import Callable, Sequence  # noqa: E402

import pytest  # noqa: E402

from initmatters.compose import load_settings  # noqa: E402
from initmatters_core.settings import ExperimentSettings  # noqa: E402

ComposeFn = Callable[[str | Sequence[str]], tuple[ExperimentSettings, str]]


def compose(overrides: str | Sequence[str] = "") -> tuple[ExperimentSettings, str]:
    """(validated settings, resolved YAML) of conf/config.yaml with Hydra `overrides`."""
    return load_settings(overrides)


@pytest.fixture
def compose_settings() -> ComposeFn:
    """Compose the real conf/ with arbitrary overrides, e.g. compose_settings("init=pretrained")."""
    return compose


@pytest.fixture
def small_settings() -> tuple[ExperimentSettings, str]:
    """The real conf/ in its seconds-long smoke mode: (settings, resolved YAML)."""
    return load_settings("debug=default")
