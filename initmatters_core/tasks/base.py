"""What every task provides, and what the apps and the server see of it.

A task is a package `initmatters_core.tasks.<name>` with two modules:
- `settings` (torch-free, read when settings are validated): DATA_NAMES, MODEL_NAMES,
  data_section(name) / model_section(name) (the section dataclasses) and validate(settings);
- `task` (imported only when the task runs): check_before_start(settings) (what a run on this
  machine needs is there: data, device, init file; else a one-line SettingError),
  server_setup(settings) -> TaskServer and
  local_update(settings, partition_id, num_partitions, global_state, init_state, server_round,
  proximal_mu) -> StateUpdate.
Models travel as state dicts, so FedAvg, checkpoints and model files are the same for every task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from initmatters_core.settings import ClientSettings, ExperimentSettings

if TYPE_CHECKING:  # torch-free at run time: the registry imports this module to validate settings
    import torch

State = Mapping[str, "torch.Tensor"]
StateMetrics = Callable[[State], dict[str, float]]


@dataclass(frozen=True)
class StateUpdate:
    """A client's reply: its trained state dict, its sample count and summary metrics."""

    state: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TaskServer:
    """Everything the server derives from the settings before round 1 (any task)."""

    init_state: dict[str, torch.Tensor]  # w(0)
    central_metrics: StateMetrics  # test loss/error and the alignment report of a global model (vs w(0))
    round_columns: tuple[str, ...]  # rounds.csv columns of this task
    partition: dict[str, Any]  # sizes, per-client label histograms, heterogeneity (partition.json)
    realised_h: float  # the heterogeneity measure H (the paper's h on the binary task)
    schedule: list[list[int]]  # partition-ids trained in each round
    send_init_state: bool = False  # clients need w(0) (synthetic noise memorization)
    artifacts: dict[str, torch.Tensor] = field(default_factory=dict)  # extra files, e.g. signal.pt
    description: str = ""  # one line for the log (data sources, loaded weights)
    progress_metric: str = "misaligned"  # the rounds.csv column the progress line shows besides test_error
    facts: dict[str, Any] = field(default_factory=dict)  # derived facts of the configuration (summary.json)
    warnings: list[str] = field(default_factory=list)  # one line each, logged at start

    @property
    def client_sizes(self) -> list[int]:
        return [int(size) for size in self.partition["sizes"]]


class TaskSettingsModule(Protocol):
    """`initmatters_core.tasks.<name>.settings`."""

    DATA_NAMES: tuple[str, ...]
    MODEL_NAMES: tuple[str, ...]

    def data_section(self, name: str) -> type: ...

    def model_section(self, name: str) -> type: ...

    def validate(self, settings: ExperimentSettings) -> None: ...


class Task(Protocol):
    """`initmatters_core.tasks.<name>.task`."""

    def check_before_start(self, settings: ExperimentSettings) -> None: ...

    def server_setup(self, settings: ExperimentSettings) -> TaskServer: ...

    def local_update(
        self,
        settings: ClientSettings | ExperimentSettings,
        partition_id: int,
        num_partitions: int,
        global_state: State,
        init_state: State | None,
        server_round: int,
        proximal_mu: float = 0.0,
    ) -> StateUpdate: ...
