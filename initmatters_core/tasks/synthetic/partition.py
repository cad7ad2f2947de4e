"""Each client's synthetic dataset: its true labels from the shared partitioner, then its features.

All schemes split one balanced pool of K * n true labels (so the union of the clients' data is
always balanced) with `initmatters_core.federation.partition_rows`. A client's features are then
drawn from its own random stream, so a client's data is a pure function of (seed, partition id,
number of partitions, settings) and is identical in simulation and on a device.
"""

from __future__ import annotations

import numpy as np
import torch

from initmatters_core.federation import check_partition_id, partition_rows
from initmatters_core.seeding import Stream, numpy_rng
from initmatters_core.settings import HeterogeneitySettings
from initmatters_core.tasks.synthetic.data import SignalNoiseData, balanced_labels, sample_examples
from initmatters_core.tasks.synthetic.settings import DataSettings

CLASSES = (1, -1)  # label values in partition.json's histogram order


def partition_true_labels(
    heterogeneity: HeterogeneitySettings, seed: int, num_partitions: int, samples_per_client: int
) -> tuple[list[np.ndarray], int]:
    """(true labels y_hat of every client, int64 arrays, client k's in position k; the partitioner's
    attempts, see `federation.partition_rows`)."""
    pool = balanced_labels(num_partitions * samples_per_client, numpy_rng(seed, Stream.LABEL_POOL))
    rows, attempts = partition_rows(pool, heterogeneity, num_partitions, seed)
    return [pool[part].astype(np.int64) for part in rows], attempts


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
    check_partition_id(partition_id, num_partitions)
    labels, _ = partition_true_labels(heterogeneity, seed, num_partitions, data.samples_per_client)
    return examples_for_labels(data, seed, partition_id, labels[partition_id], signal)


def examples_for_labels(
    data: DataSettings, seed: int, partition_id: int, true_labels: np.ndarray, signal: torch.Tensor
) -> SignalNoiseData:
    """Client `partition_id`'s examples for its true labels, from its own CLIENT_DATA stream."""
    rng = numpy_rng(seed, Stream.CLIENT_DATA, partition_id)
    return sample_examples(rng.permutation(true_labels), signal, data.noise_std, data.label_noise, rng)
