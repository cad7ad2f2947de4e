"""Every preset and every config-group option composes; every preset smoke-runs end to end.

Fast: each conf/experiment/*.yaml composes to valid settings with and without `debug=default`,
and each option of each config group composes with fitting companions (or fails with a one-line
SettingError naming the setting when combined with the other task).
Slow: each preset runs as one single-job, in-process simulation (`python -m initmatters.sweep
experiment=<p> debug=default`, no --multirun) and writes the results contract. The image presets
get tiny local copies of CIFAR-10 / TinyImageNet in the Hub's parquet layout (random pixels);
ImageNet weights are not available offline, so they run with their default init (random).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from initmatters.compose import CONF_DIR, group_options, load_settings
from initmatters.launch import PROJECT_ROOT
from initmatters_core.settings import SettingError

PRESETS = group_options("experiment")
GROUPS = ("data", "model", "init", "heterogeneity", "fl", "strategy")
SYNTHETIC, DIGITS = "", "data=digits"
# What an option needs beyond the defaults; every option not named here composes with SYNTHETIC or DIGITS.
COMPANIONS = {
    ("model", "patch_cnn"): DIGITS,
    ("model", "resnet18"): DIGITS,
    ("init", "proxy_pretrained"): DIGITS,
    ("init", "imagenet"): f"{DIGITS} model=resnet18",
    ("init", "checkpoint"): "init.path=/nonexistent/dummy_state.pt",  # checked when the run starts
}
OPTIONS = [(group, option) for group in GROUPS for option in group_options(group)]


def test_every_group_has_options() -> None:
    assert PRESETS and all(group_options(group) for group in GROUPS)
    assert {path.stem for path in (CONF_DIR / "experiment").glob("*.yaml")} == set(PRESETS)


@pytest.mark.parametrize("debug", ["", "debug=default"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset: str, debug: str) -> None:
    settings, resolved = load_settings(f"experiment={preset} {debug}")
    assert resolved
    if debug:
        assert settings.fl.num_rounds == 2 and settings.fl.num_clients == 2


def compose_or_error(overrides: str) -> SettingError | None:
    try:
        load_settings(overrides)
    except SettingError as error:
        return error
    return None


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group: str, option: str) -> None:
    choice = f"{group}={option}"
    if (group, option) in COMPANIONS:
        fitting = [COMPANIONS[group, option]]
    else:  # fits one task at least; with the other it must fail naming the setting
        fitting = [SYNTHETIC, DIGITS]
    errors = {companions: compose_or_error(f"{choice} {companions}") for companions in fitting}
    assert any(error is None for error in errors.values()), f"{choice}: {errors}"
    for error in errors.values():
        if error is not None:
            message = str(error)
            assert "\n" not in message and group in message, message


# --- every preset end to end (slow) ----------------------------------------------------------------

PRESET_TIMEOUT_S = 600
NUM_CLASSES = 10


def write_hub_parquet(path: Path, pixels: np.ndarray, labels: list[int], image_column: str) -> None:
    """One split in the Hub's parquet layout: `image_column` (PNG bytes) and label."""
    import datasets
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict({image_column: [Image.fromarray(array) for array in pixels], "label": labels})
    table.cast_column(image_column, datasets.Image()).to_parquet(str(path))


def write_tiny_copy(folder: Path, splits: dict[str, int], size: int, image_column: str) -> Path:
    """Random RGB images of `size` x `size`, labels cycling over NUM_CLASSES classes."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        pixels = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        write_hub_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", pixels,
                          [i % NUM_CLASSES for i in range(count)], image_column)
    return folder


@pytest.fixture(scope="module")
def local_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("copies")
    return {
        "cifar10": write_tiny_copy(root / "cifar10", {"train": 60, "test": 20}, 32, "img"),
        "tinyimagenet": write_tiny_copy(root / "tinyimagenet", {"train": 60, "valid": 20}, 64, "image"),
    }


def run_preset(preset: str, out: Path, extra: list[str], tmp: Path) -> tuple[subprocess.CompletedProcess, float]:
    """One single-job run of `preset`; on timeout the whole process group (Ray included) is killed."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "HF_HOME": str(tmp / "hf-home")}
    command = [sys.executable, "-m", "initmatters.sweep", f"experiment={preset}", "debug=default",
               f"hydra.run.dir={out}", *extra]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=PRESET_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"experiment={preset} ran past {PRESET_TIMEOUT_S} s:\n{output[-3000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, output, ""), time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_smoke_runs(preset: str, tmp_path: Path, local_copies: dict[str, Path]) -> None:
    """One preset per case, so that `-k <preset>` runs one."""
    settings, _ = load_settings(f"experiment={preset} debug=default")
    name = settings.data.name
    extra = [f"data.data_dir={local_copies[name]}"] if name in local_copies else []
    out = tmp_path / preset
    completed, seconds = run_preset(preset, out, extra, tmp_path)
    print(f"experiment={preset}: {seconds:.1f} s")
    missing = [file for file in ("summary.json", "rounds.csv") if not (out / file).is_file()]
    assert completed.returncode == 0 and not missing, (f"experiment={preset}: exit {completed.returncode}, "
                                                        f"missing {missing}\n{completed.stdout[-2500:]}")
