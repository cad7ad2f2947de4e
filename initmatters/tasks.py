"""What the apps see of a task: a server-side setup and a client-side update over state dicts.

Two tasks share the Flower apps, the strategy and the results contract:
- synthetic: the paper's signal-plus-noise data and two-layer CNN (`initmatters.federated`);
- image: real images with ResNet18 or the multi-class patch CNN (`initmatters.vision.task`).
`ExperimentSettings.image_task` picks one. Models travel as state dicts (the synthetic one is
{"weight": [2, m, d]}), so FedAvg, checkpoints and model files are the same for both.
The image task is imported only when used: a synthetic client never loads torchvision or
the datasets library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from initmatters import federated
from initmatters.model import WEIGHT_KEY
from initmatters.settings import ExperimentSettings

State = Mapping[str, torch.Tensor]
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
    alignment_metrics: StateMetrics  # alignment of a global model relative to w(0), every round
    central_metrics: StateMetrics  # test_loss and test_error of a global model
    round_columns: tuple[str, ...]  # rounds.csv columns of this task
    partition: dict[str, Any]  # sizes, per-client label histograms, heterogeneity (partition.json)
    realised_h: float  # the heterogeneity measure H (the paper's h on the binary task)
    schedule: list[list[int]]  # partition-ids trained in each round
    send_init_state: bool = False  # clients need w(0) (synthetic noise memorization)
    artifacts: dict[str, torch.Tensor] = field(default_factory=dict)  # extra files, e.g. signal.pt
    description: str = ""  # one line for the log (data sources, loaded weights)

    @property
    def client_sizes(self) -> list[int]:
        return [int(size) for size in self.partition["sizes"]]


def server_setup(settings: ExperimentSettings) -> TaskServer:
    """The task's server side: w(0), per-round metrics, the partition facts and the schedule."""
    if settings.image_task:
        from initmatters.vision.task import image_server_setup

        return image_server_setup(settings)
    return _synthetic_server_setup(settings)


def local_update(
    settings: ExperimentSettings,
    partition_id: int,
    num_partitions: int,
    global_state: State,
    init_state: State | None,
    server_round: int,
) -> StateUpdate:
    """One client's round of the task on its partition, from the global state dict."""
    if settings.image_task:
        from initmatters.vision.task import image_local_update

        return image_local_update(settings, partition_id, num_partitions, global_state, server_round)
    update = federated.local_update(
        settings, partition_id, num_partitions,
        global_weight=global_state[WEIGHT_KEY],
        init_weight=init_state[WEIGHT_KEY] if init_state is not None else None,
        server_round=server_round,
    )
    return StateUpdate(state={WEIGHT_KEY: update.weight}, num_examples=update.num_examples, metrics=update.metrics)


def partition_summary(histograms: np.ndarray, heterogeneity: float, class_names: list[str]) -> dict[str, Any]:
    """partition.json: per-client sizes and label histograms ([K, C]) and the heterogeneity H."""
    counts = np.asarray(histograms, dtype=np.int64)
    return {
        "num_partitions": int(counts.shape[0]),
        "classes": class_names,
        "sizes": counts.sum(axis=1).tolist(),
        "histograms": counts.tolist(),
        "heterogeneity": float(heterogeneity),
    }


def _synthetic_server_setup(settings: ExperimentSettings) -> TaskServer:
    from initmatters.alignment import alignment_report
    from initmatters.results import ROUND_COLUMNS

    setup = federated.server_setup(settings)
    init_weight, signal, test = setup.init_weight, setup.signal, setup.test
    return TaskServer(
        init_state={WEIGHT_KEY: init_weight},
        alignment_metrics=lambda state: alignment_report(init_weight, state[WEIGHT_KEY], signal),
        central_metrics=lambda state: federated.central_metrics(state[WEIGHT_KEY], test),
        round_columns=ROUND_COLUMNS,
        partition=partition_summary(setup.label_counts, setup.realised_h, ["+1", "-1"]),
        realised_h=setup.realised_h,
        schedule=setup.schedule,
        send_init_state=settings.log.noise_memorization,
        artifacts={"signal.pt": signal.clone()},
        description=f"synthetic data, d={settings.data.dim}, realised h={setup.realised_h:.4f}",
    )
