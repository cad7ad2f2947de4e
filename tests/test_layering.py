"""The core package stays free of Flower and Hydra (flwr_datasets, a data library, is allowed)."""

from __future__ import annotations

import json
import subprocess
import sys

from initmatters.launch import PROJECT_ROOT

CORE_MODULES = (
    "initmatters.settings", "initmatters.seeding", "initmatters.data", "initmatters.partition",
    "initmatters.model", "initmatters.training", "initmatters.alignment", "initmatters.initialization",
    "initmatters.federated", "initmatters.results", "initmatters.plots", "initmatters.report",
    "initmatters.vision.datasets", "initmatters.vision.partitions", "initmatters.vision.models",
    "initmatters.vision.alignment", "initmatters.vision.transforms",
)


def test_core_imports_neither_flower_nor_hydra() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(CORE_MODULES)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'hydra', 'omegaconf'))))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=300, check=True)
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []
