"""The results contract of one run: every file name, and writers that never leave half a file.

<output_dir>/
  config.yaml      the resolved settings
  rounds.csv       one row per round (round 0 = the initial model); the task's columns
  summary.json     final metrics, realised h, wall time, package versions (written last)
  partition.json   per-client sizes and label histograms [K, C] and the heterogeneity H
  model_init.pt    state dict before round 1 (synthetic: {"weight": [2, m, d]})
  model_final.pt   state dict after the last round
  <artifacts>      files a task adds (synthetic: signal.pt, mu as a 1-D tensor [d])
  plots/*.png      figures made from rounds.csv and partition.json alone
  tensorboard/     with log.tensorboard: event files, every rounds.csv column per round (initmatters_core.trackers)
  wandb/           with log.wandb: the Weights & Biases run folder, the same scalars
  checkpoint/checkpoint.pt   only while the run is in progress (removed once summary.json exists)

Every file is written to a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written file. Other modules name these files through the constants
here (or `RunFiles`), never by literal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from initmatters_core.settings import SettingError

if TYPE_CHECKING:  # torch is imported where a tensor is read or written, not to name files
    import torch

CONFIG_FILE = "config.yaml"
ROUNDS_FILE = "rounds.csv"
SUMMARY_FILE = "summary.json"
PARTITION_FILE = "partition.json"
MODEL_INIT_FILE = "model_init.pt"
MODEL_FINAL_FILE = "model_final.pt"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # the folder W&B itself makes under the `dir` it is given (the run's folder)
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"  # the PID of the process writing the run (removed when it ends)


def default_output_dir(base: Path) -> Path:
    """<base>/outputs/<date>/<time with microseconds>: a new folder per run."""
    return base / "outputs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run's results folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def rounds(self) -> Path:
        return self.root / ROUNDS_FILE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def partition(self) -> Path:
        return self.root / PARTITION_FILE

    @property
    def model_init(self) -> Path:
        return self.root / MODEL_INIT_FILE

    @property
    def model_final(self) -> Path:
        return self.root / MODEL_FINAL_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def wandb(self) -> Path:
        return self.root / WANDB_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_DIR / CHECKPOINT_FILE

    def finished(self) -> bool:
        """summary.json is written last: its presence marks a complete run."""
        return self.summary.is_file()

    def holds_finished_run(self, resolved_config_yaml: str) -> bool:
        """A finished run of exactly this resolved config: a sweep job that need not run again."""
        return self.finished() and self._made_with(resolved_config_yaml)

    def interrupted(self) -> bool:
        """A checkpoint and no summary.json: a run to resume."""
        return self.checkpoint.exists() and not self.finished()

    def holds_interrupted_run(self, resolved_config_yaml: str) -> bool:
        """An interrupted run of exactly this resolved config: a sweep job to continue from its checkpoint."""
        return self.interrupted() and self._made_with(resolved_config_yaml)

    def _made_with(self, resolved_config_yaml: str) -> bool:
        return self.config.is_file() and self.config.read_text() == resolved_config_yaml


def output_dir_problem(path: Path) -> str | None:
    """The one-line problem with writing a run into `path` (None if fine): a file, or not writable."""
    if path.exists() and not path.is_dir():
        return f"output-dir {path} is a file: give a folder"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"output-dir {path} cannot be written ({existing} is not a writable folder)"
    return None


class OutputDirBusy(RuntimeError):
    """Another live process writes into the run's folder."""


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (Linux /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_holder(files: RunFiles) -> int | None:
    """The PID of the live process holding the folder's lock (None when free or its holder is dead)."""
    try:
        pid = int(files.lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and pid_alive(pid) else None


class RunLock:
    """An exclusive lock on a run's folder while one process writes it; a stale lock of a dead process is taken over.

    The lock file holds the writer's PID, created with O_EXCL so that two writers never both win.
    """

    def __init__(self, files: RunFiles) -> None:
        self.files = files

    def __enter__(self) -> RunLock:
        self.files.root.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.files.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock_holder(self.files)
                if holder is not None:
                    raise OutputDirBusy(f"output-dir {self.files.root} is in use by PID {holder} "
                                        f"(another run writes there): choose another folder") from None
                self.files.lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            return self
        raise OutputDirBusy(f"output-dir {self.files.root}: could not take its lock {self.files.lock}")

    def __exit__(self, *exc: object) -> None:
        self.files.lock.unlink(missing_ok=True)


def load_state_file(path: str | Path, setting: str = "init.path") -> Any:
    """torch.load(path, weights_only=True) with a one-line SettingError (naming `setting`) when the
    file is missing or is not a torch file."""
    file = Path(path)
    if not file.is_file():
        raise SettingError(f"{setting}={str(path)!r} does not exist: give a saved state dict file")
    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a state dict  # noqa: BLE001
        raise SettingError(f"{setting}={str(path)!r} is not a torch state dict file "
                           f"({type(error).__name__}: {' '.join(str(error).split())[:120]})") from None


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` via a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp creates 0600; results are for sharing
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_tensor_atomic(path: Path, obj: Any) -> None:
    """torch.save to `path` atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict, names in order (safe to keep while the model trains on)."""
    return {key: value.detach().cpu().clone() for key, value in state.items()}


def save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Save a model's state dict (CPU copies, names in order) atomically."""
    save_tensor_atomic(path, cpu_state(state))


def format_cell(value: Any) -> str:
    """CSV cell text: blank for missing/NaN, repr-exact floats, plain ints."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(float(value))  # float(): numpy floats would print as np.float64(...)
    return str(value)


def rounds_csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """rounds.csv content for `rows` (dicts keyed by `columns`; extra keys are an error)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise KeyError(f"rounds.csv has no column(s) {sorted(unknown)}")
        writer.writerow([format_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def read_rounds_csv(path: Path) -> list[dict[str, float]]:
    """rounds.csv as a list of dicts of floats (NaN for blank cells)."""
    with open(path, newline="") as handle:
        return [
            {key: float(value) if value != "" else float("nan") for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def finite_or_none(value: float) -> float | None:
    """JSON-safe float: None for NaN/inf."""
    return value if math.isfinite(value) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class RoundLog:
    """Collects one row per round, writes rounds.csv and reports progress.

    Train-side metrics (client losses, alignment) arrive via `add_train`; the server's central
    evaluation via `add_eval`, which closes the round's row. Round 0 is the initial model.
    The first row written (and every row already in `rows`, e.g. a resumed run's) rewrites the
    file atomically; later rows are appended (no rewrite, no fsync per round); `finish` rewrites it
    once more, atomically and synced. A crash can leave rows after the last checkpoint: a resume
    rewrites the file from the checkpoint's rows.
    """

    def __init__(self, path: Path, num_rounds: int, report: Callable[[str], None], columns: Sequence[str],
                 clock: Callable[[], float] = time.monotonic, progress_metric: str = "misaligned",
                 on_round: Callable[[RoundProgress], None] | None = None) -> None:
        """on_round: receives each round's progress instead of `report` receiving it as a line (a live bar)."""
        self.path = path
        self.columns = tuple(columns)
        self.num_rounds = num_rounds
        self.rows: list[dict[str, Any]] = []
        self._pending: dict[int, dict[str, Any]] = {}
        self._report = report
        self._clock = clock
        self._start = clock()
        self._progress_metric = progress_metric
        self._on_round = on_round
        self._written = False

    def add_train(self, server_round: int, metrics: Mapping[str, Any]) -> None:
        self._pending.setdefault(server_round, {}).update(
            {key: value for key, value in metrics.items() if key in self.columns})

    def add_eval(self, server_round: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        elapsed = self._clock() - self._start
        row = {**self._pending.pop(server_round, {}), **metrics, "round": server_round,
               "elapsed_s": round(elapsed, 3)}
        self.rows.append(row)
        if self._written:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(rounds_csv_text([row], self.columns).split("\n", 1)[1])
        else:
            self.finish()
            self._written = True
        progress = self._progress(row, elapsed)
        if self._on_round is None:
            self._report(progress.line())
        else:
            self._on_round(progress)
        return row

    def finish(self) -> None:
        """Rewrite rounds.csv with every row, atomically and synced."""
        write_text_atomic(self.path, rounds_csv_text(self.rows, self.columns))

    def _progress(self, row: Mapping[str, Any], elapsed: float) -> RoundProgress:
        return RoundProgress(int(row["round"]), self.num_rounds, row.get("test_error", float("nan")),
                             self._progress_metric, row.get(self._progress_metric, float("nan")), elapsed)


@dataclass(frozen=True)
class RoundProgress:
    """Where a run stands once a round's row is closed: what its progress line or a live bar shows."""

    round: int  # rounds done (0: the initial model is measured)
    num_rounds: int
    test_error: float
    metric: str  # the task's progress metric (a rounds.csv column), e.g. misaligned
    metric_value: float  # an int for counts (misaligned)
    elapsed_s: float  # since the run started (a resumed run's earlier time included)

    @property
    def seconds_left(self) -> float:
        """Estimated seconds to the last round at the mean time per round so far (NaN at round 0)."""
        done = self.round
        return self.elapsed_s / done * (self.num_rounds - done) if done else float("nan")

    def metric_text(self) -> str:
        """The progress metric's value as the progress line shows it (a count as is, else 4 decimals)."""
        value = self.metric_value
        return str(value) if isinstance(value, int) else format(value, ".4f")

    def line(self) -> str:
        """The plain progress line, e.g. `round 3/50 | test_error 0.2100 | misaligned 4 | 1.2s elapsed, ~18.8s left`."""
        eta = f"~{self.seconds_left:.1f}s left" if self.round else "starting"
        return (f"round {self.round}/{self.num_rounds} | test_error {self.test_error:.4f} "
                f"| {self.metric} {self.metric_text()} | {self.elapsed_s:.1f}s elapsed, {eta}")
