"""Label partitions over clients and each client's synthetic dataset.

All schemes split one balanced pool of K * n true labels (so the union of the clients' data is
always balanced) with a flwr-datasets Partitioner; `LabelSkewPartitioner` is this project's
scheme that realises the heterogeneity measure h exactly (partition_true_labels calls its split,
`label_skew_split`, directly: same labels, no datasets/flwr_datasets import). A client's features are then drawn
from its own random stream, so a partition is a pure function of
(seed, partition id, number of partitions, settings) and is identical in simulation and on a
device.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from initmatters.data import SignalNoiseData, balanced_labels, sample_examples
from initmatters.seeding import Stream, int_seed, numpy_rng
from initmatters.settings import DataSettings, HeterogeneitySettings

if TYPE_CHECKING:
    import datasets
    from flwr_datasets.partitioner import Partitioner

# `datasets` and `flwr_datasets` are imported where they are used, not here: flwr_datasets'
# package __init__ imports its plotting helpers and with them seaborn and scipy (about 1.3 s of
# the 3 s this module took to import), which every process importing this module paid, each
# ClientApp process in deployment included. LabelSkewPartitioner subclasses flwr-datasets'
# Partitioner, so that class is built on first use (module __getattr__), once per process.

LABEL_COLUMN = "label"


def label_skew_split(labels: np.ndarray, num_partitions: int, h: float) -> list[np.ndarray]:
    """Indices into `labels` of each client's examples under label skew h (LabelSkewPartitioner)."""
    if num_partitions % 2:
        raise ValueError(f"LabelSkewPartitioner needs an even num_partitions, got {num_partitions}")
    size, remainder = divmod(labels.shape[0], num_partitions)
    if remainder:
        raise ValueError("LabelSkewPartitioner needs a pool size divisible by num_partitions")
    majority = int(round(size * (1.0 + h) / 2.0))
    remaining = {+1: list(np.flatnonzero(labels == 1)), -1: list(np.flatnonzero(labels == -1))}
    split = []
    for k in range(num_partitions):
        major = +1 if k % 2 == 0 else -1
        take = {major: majority, -major: size - majority}
        part = []
        for label, count in take.items():
            if count > len(remaining[label]):
                raise ValueError("LabelSkewPartitioner needs a balanced pool of labels")
            part += remaining[label][:count]
            del remaining[label][:count]
        split.append(np.sort(np.asarray(part, dtype=np.int64)))
    return split


@functools.cache
def _label_skew_partitioner_class() -> type[Partitioner]:
    from flwr_datasets.partitioner import Partitioner

    class LabelSkewPartitioner(Partitioner):
        """Binary label skew with an exact heterogeneity level h in [0, 1].

        Client k holds round(n (1 + h) / 2) samples of its majority label (+1 for even k, -1 for
        odd k) and the rest of the other label, so |n+ - n-| / n = h for every client when
        n (1 + h) / 2 is an integer (otherwise the nearest realisable value). Needs an even number
        of partitions and a balanced pool of num_partitions * n labels in {-1, +1}.
        """

        def __init__(self, num_partitions: int, h: float, partition_by: str = LABEL_COLUMN) -> None:
            super().__init__()
            if num_partitions % 2:
                raise ValueError(f"LabelSkewPartitioner needs an even num_partitions, got {num_partitions}")
            self._num_partitions = num_partitions
            self._h = h
            self._partition_by = partition_by
            self._indices: list[np.ndarray] | None = None

        @property
        def num_partitions(self) -> int:
            return self._num_partitions

        def load_partition(self, partition_id: int) -> datasets.Dataset:
            if self._indices is None:
                labels = np.asarray(self.dataset[self._partition_by])
                self._indices = label_skew_split(labels, self._num_partitions, self._h)
            return self.dataset.select(self._indices[partition_id].tolist())

    LabelSkewPartitioner.__module__ = __name__  # so it pickles as initmatters.partition.LabelSkewPartitioner
    LabelSkewPartitioner.__qualname__ = "LabelSkewPartitioner"
    return LabelSkewPartitioner


def __getattr__(name: str) -> Any:
    """`initmatters.partition.LabelSkewPartitioner`, built on first access (see above)."""
    if name == "LabelSkewPartitioner":
        return _label_skew_partitioner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_partitioner(heterogeneity: HeterogeneitySettings, num_partitions: int, seed: int) -> Partitioner:
    """The flwr-datasets partitioner of a heterogeneity scheme (not yet given a dataset)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if heterogeneity.name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if heterogeneity.name == "label_skew":
        return _label_skew_partitioner_class()(num_partitions, heterogeneity.h)
    partitioner_seed = int_seed(seed, Stream.PARTITIONER) % (2**32)
    if heterogeneity.name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=LABEL_COLUMN,
            alpha=heterogeneity.alpha,
            min_partition_size=heterogeneity.min_partition_size,
            self_balancing=False,
            shuffle=True,
            seed=partitioner_seed,
        )
    if heterogeneity.name == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by=LABEL_COLUMN,
            num_classes_per_partition=heterogeneity.classes_per_client,
            class_assignment_mode="deterministic",
            shuffle=True,
            seed=partitioner_seed,
        )
    raise ValueError(f"unknown heterogeneity scheme {heterogeneity.name!r}")


def partition_true_labels(
    heterogeneity: HeterogeneitySettings, seed: int, num_partitions: int, samples_per_client: int
) -> list[np.ndarray]:
    """True labels y_hat of every client, list of int arrays (client k's in position k)."""
    pool = balanced_labels(num_partitions * samples_per_client, numpy_rng(seed, Stream.LABEL_POOL))
    if heterogeneity.name == "label_skew":
        # LabelSkewPartitioner's own split, without a datasets.Dataset: the same labels, and a
        # process (a ClientApp in deployment) need not import datasets and flwr_datasets (~2 s).
        return [pool[indices].astype(np.int64) for indices in label_skew_split(pool, num_partitions, heterogeneity.h)]
    import datasets

    partitioner = make_partitioner(heterogeneity, num_partitions, seed)
    partitioner.dataset = datasets.Dataset.from_dict({LABEL_COLUMN: pool.tolist()})
    return [
        np.asarray(partitioner.load_partition(k)[LABEL_COLUMN], dtype=np.int64)
        for k in range(num_partitions)
    ]


def label_imbalance(labels: np.ndarray) -> float:
    """|n+ - n-| / n of one client's labels (0 for an empty client)."""
    if labels.shape[0] == 0:
        return 0.0
    return float(abs(int(np.sum(labels == 1)) - int(np.sum(labels == -1))) / labels.shape[0])


def realised_heterogeneity(client_labels: list[np.ndarray]) -> float:
    """The paper-style measure h = (1/K) sum_k |n_k+ - n_k-| / n_k of a partition."""
    return float(np.mean([label_imbalance(labels) for labels in client_labels]))


def client_dataset(
    data: DataSettings,
    heterogeneity: HeterogeneitySettings,
    seed: int,
    partition_id: int,
    num_partitions: int,
    signal: torch.Tensor,
) -> SignalNoiseData:
    """Client `partition_id`'s training data: a pure function of its arguments."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id={partition_id} is out of range: allowed 0..{num_partitions - 1}")
    labels = partition_true_labels(heterogeneity, seed, num_partitions, data.samples_per_client)
    return examples_for_labels(data, seed, partition_id, labels[partition_id], signal)


def examples_for_labels(
    data: DataSettings, seed: int, partition_id: int, true_labels: np.ndarray, signal: torch.Tensor
) -> SignalNoiseData:
    """Client `partition_id`'s examples for its true labels, from its own CLIENT_DATA stream."""
    rng = numpy_rng(seed, Stream.CLIENT_DATA, partition_id)
    return sample_examples(rng.permutation(true_labels), signal, data.noise_std, data.label_noise, rng)
