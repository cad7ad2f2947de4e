"""Optional experiment trackers: every rounds.csv row as scalars in TensorBoard and Weights & Biases.

Both mirror rounds.csv: one scalar per column (tag = the column name, step = the round), logged
when the row is written; a blank cell (NaN) is no point. On every start of a run (fresh or resumed)
a tracker's folder is rebuilt from the rows known at that moment (a resumed run's checkpoint rows,
then each new round), so a round is never logged twice and what a crash left half-written is gone.

    <run>/tensorboard/   TensorBoard event files (`tensorboard --logdir <sweep dir>` compares the jobs)
    <run>/wandb/         the W&B run folder (offline unless WANDB_MODE says otherwise; `wandb sync`)

The packages are optional extras, imported only when a run opens its trackers (no torch at import).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

from initmatters_core.results import RunFiles
from initmatters_core.settings import LogSettings, SettingError

# log.<setting> -> (the module it needs, the optional extra of pyproject.toml that installs it)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def missing_extra_error(setting: str) -> SettingError:
    """The one-line error of log.<setting>=true when its package is not installed."""
    _, extra = TRACKER_PACKAGES[setting]
    return SettingError(f'log.{setting}=true needs the optional extra: pip install -e ".[{extra}]"')


def check_trackers_installed(log: LogSettings) -> None:
    """One-line SettingError when a tracker is on and its package is not installed (imports nothing)."""
    for setting, (module, _) in TRACKER_PACKAGES.items():
        if getattr(log, setting) and importlib.util.find_spec(module) is None:
            raise missing_extra_error(setting)


def _import(setting: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra_error(setting) from None


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's cells as scalars, less `round` (the step) and the cells rounds.csv leaves blank."""
    return {key: float(value) for key, value in row.items()
            if key != "round" and value is not None and not math.isnan(float(value))}


class RoundTracker(Protocol):
    """One tracker of a run: takes each completed rounds.csv row."""

    description: str  # one line for the log: where its files are, how to look at them

    def log_row(self, row: Mapping[str, Any]) -> None: ...


class TensorBoardTracker:
    """Event files in <run>/tensorboard/, one scalar per column, step = round."""

    def __init__(self, folder: Path) -> None:
        _import("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        shutil.rmtree(folder, ignore_errors=True)  # rebuilt from the rows known now (see the module doc)
        self.writer = SummaryWriter(log_dir=str(folder))
        self.description = f"TensorBoard events in {folder} (tensorboard --logdir {folder.parent.parent})"

    def log_row(self, row: Mapping[str, Any]) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=int(row["round"]))
        self.writer.flush()  # a round is seconds long at most: readers see it at once

    def close(self) -> None:
        self.writer.close()


# a W&B run folder: (offline-)run-<date>_<time>-<run id>
_WANDB_RUN_FOLDER = re.compile(r"^(?:offline-)?run-(?P<started>\d{8}_\d{6})-(?P<id>[a-z0-9]+)$")


def previous_wandb_id(folder: Path) -> str | None:
    """The id of the latest W&B run in `folder` (<run>/wandb/), None when there is none."""
    runs = sorted((match["started"], match["id"]) for path in folder.glob("*run-*")
                  if (match := _WANDB_RUN_FOLDER.match(path.name)))
    return runs[-1][1] if runs else None


class WandbTracker:
    """A W&B run in <run>/wandb/: project log.wandb_project, group = the run folder's parent (the
    sweep), name = the run folder, config = the resolved settings; offline unless WANDB_MODE is set.

    resume: keep the interrupted run's W&B id (online, W&B continues that run; the rows it already
    holds are not replaced)."""

    def __init__(self, files: RunFiles, project: str, config: Mapping[str, Any], *, resume: bool) -> None:
        wandb = _import("wandb", "wandb")
        self.wandb = wandb
        run_id = previous_wandb_id(files.wandb) if resume else None
        shutil.rmtree(files.wandb, ignore_errors=True)  # rebuilt from the rows known now (see the module doc)
        files.wandb.mkdir(parents=True)
        self.run = wandb.init(
            project=project, group=files.root.parent.name, name=files.root.name, config=dict(config),
            dir=str(files.root), mode=os.environ.get("WANDB_MODE", "offline"), id=run_id,
            resume="allow" if run_id else None, settings=wandb.Settings(silent=True, console="off"),
        )
        run_folder = Path(self.run.dir).parent
        self.description = (f"W&B run {self.run.id} offline in {run_folder} (upload it with: wandb sync {run_folder})"
                            if self.run.offline else f"W&B run {self.run.id} in project {project} ({self.run.url})")

    def log_row(self, row: Mapping[str, Any]) -> None:
        self.run.log(scalars(row), step=int(row["round"]))

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
        # finish() may return before W&B's service process has written the run's .wandb file (seen: a
        # file of just its header right after finish); stopping the service writes it out.
        self.wandb.teardown()


class Trackers:
    """The run's trackers together (none when both are off)."""

    def __init__(self, trackers: Iterable[RoundTracker]) -> None:
        self.trackers = list(trackers)

    def log_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            for tracker in self.trackers:
                tracker.log_row(row)


@contextmanager
def open_trackers(log: LogSettings, files: RunFiles, config: Mapping[str, Any], *, resume: bool
                  ) -> Iterator[Trackers]:
    """The trackers `log` turns on, writing into the run's folder; closed (files flushed) however the run ends.

    config: the resolved settings, flat ("fl.lr": 0.5), for W&B; resume: the run continues a checkpoint.
    """
    with ExitStack() as stack:
        opened: list[RoundTracker] = []
        if log.tensorboard:
            tensorboard = TensorBoardTracker(files.tensorboard)
            stack.callback(tensorboard.close)
            opened.append(tensorboard)
        if log.wandb:
            wandb = WandbTracker(files, log.wandb_project, config, resume=resume)
            stack.push(lambda error_type, *_: wandb.close(failed=error_type is not None))
            opened.append(wandb)
        yield Trackers(opened)
