"""Label partitions of an image dataset's split over K clients (the shared partitioner), with their facts.

`image_partitions` splits the rows of one split (given by its labels 0..C-1 alone) with the
project's one partitioner factory (`initmatters_core.federation.partition_rows`: flwr-datasets'
IidPartitioner, DirichletPartitioner or PathologicalPartitioner, seeded from the experiment
seed's PARTITIONER stream), so a client's rows are a pure function of (labels, scheme, K, seed,
alpha / classes per client) and are the same in simulation and on a device. The heterogeneity
measure H is `initmatters_core.federation.heterogeneity_measure`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from initmatters_core.federation import heterogeneity_measure, label_histograms, mean_total_variation, partition_rows
from initmatters_core.settings import HeterogeneitySettings, SettingError
from initmatters_core.tasks.image.settings import HETEROGENEITY_SCHEMES


@dataclass(frozen=True)
class ImagePartition:
    """Rows of every client (client k's in position k), label histograms and heterogeneity."""

    indices: list[np.ndarray]  # int64 row indices into the split, per client
    histograms: np.ndarray  # [K, C] int64: examples of class c held by client k
    heterogeneity: float  # H, see the module docstring
    mean_tv: float  # (1/K') sum_k TV(p_k, q), unnormalised
    attempts: int  # seeded partitioners tried (federation.partition_rows)

    @property
    def num_partitions(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict:
        """JSON-ready summary: histograms, sizes and both heterogeneity numbers."""
        return {
            "num_partitions": self.num_partitions,
            "num_classes": int(self.histograms.shape[1]),
            "heterogeneity": self.heterogeneity,
            "mean_tv": self.mean_tv,
            "sizes": [int(part.shape[0]) for part in self.indices],
            "histograms": self.histograms.tolist(),
            "partitioner_attempts": self.attempts,
        }


def image_partitions(
    labels: np.ndarray,
    scheme: str,
    num_partitions: int,
    seed: int,
    alpha: float | None = None,
    classes_per_client: int | None = None,
    *,
    num_classes: int | None = None,
    min_partition_size: int = 1,
) -> ImagePartition:
    """Partition the rows of a split with labels `labels` (ints in 0..C-1) over `num_partitions`.

    scheme "iid" (IidPartitioner), "dirichlet" (DirichletPartitioner(alpha), redrawn until
    every client has `min_partition_size` >= 1 rows, see `federation.partition_rows`) or
    "pathological" (PathologicalPartitioner, `classes_per_client` classes per client assigned
    deterministically: client k gets classes k, k+1, ... mod C). `num_classes` defaults to
    max(label) + 1. Setting errors are one-line `SettingError`s.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None and labels.size else int(num_classes or 0)
    _validate(labels, scheme, num_partitions, alpha, classes_per_client, num_classes, min_partition_size)
    heterogeneity = HeterogeneitySettings(name=scheme, alpha=alpha, classes_per_client=classes_per_client,
                                          min_partition_size=min_partition_size)
    indices, attempts = partition_rows(labels, heterogeneity, num_partitions, seed)
    histograms = label_histograms(labels, indices, range(num_classes))
    return ImagePartition(
        indices=indices,
        histograms=histograms,
        heterogeneity=heterogeneity_measure(histograms),
        mean_tv=mean_total_variation(histograms),
        attempts=attempts,
    )


def _validate(
    labels: np.ndarray, scheme: str, num_partitions: int, alpha: float | None, classes_per_client: int | None,
    num_classes: int, min_partition_size: int,
) -> None:
    if scheme not in HETEROGENEITY_SCHEMES:
        raise SettingError(f"heterogeneity={scheme!r} is invalid: allowed {'|'.join(HETEROGENEITY_SCHEMES)}")
    if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) or not 0 < num_partitions:
        raise SettingError(f"fl.num_clients={num_partitions!r} is invalid: allowed a positive integer")
    if num_partitions > labels.shape[0]:
        raise SettingError(
            f"fl.num_clients={num_partitions} is invalid: allowed at most the {labels.shape[0]} training examples"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if scheme == "dirichlet":
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < float("inf"):
            raise SettingError(f"heterogeneity.alpha={alpha!r} is invalid: allowed a finite number > 0")
        if not isinstance(min_partition_size, int) or isinstance(min_partition_size, bool) or min_partition_size < 1:
            raise SettingError(
                f"heterogeneity.min_partition_size={min_partition_size!r} is invalid: allowed an integer >= 1 "
                "(a client without data)"
            )
    if scheme == "pathological":
        present = int(np.unique(labels).shape[0])
        ok = isinstance(classes_per_client, int) and not isinstance(classes_per_client, bool)
        if not ok or not 1 <= classes_per_client <= present:
            raise SettingError(
                f"heterogeneity.classes_per_client={classes_per_client!r} is invalid: allowed an integer in "
                f"[1, {present}] (the classes present)"
            )
