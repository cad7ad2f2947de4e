"""Each client's synthetic dataset: its true labels from the shared partitioner, then its features.

All schemes split one balanced pool of K * n true labels (so the union of the clients' data is
always balanced) with `initmatters_core.federation.partition_rows`. A client's features are then
drawn from its own random stream, so a client's data is a pure function of (seed, partition id,
number of partitions, settings) and is identical in simulation and on a device. With
heterogeneity.noise_skew or signal_skew, client k draws its features with its own sigma_p and mu
(`skew`); `measure_skews` measures the realised skews on the generated data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from initmatters_core.federation import check_partition_id, partition_rows
from initmatters_core.seeding import Stream, numpy_rng
from initmatters_core.settings import HeterogeneitySettings
from initmatters_core.tasks.synthetic.data import SIGNAL_PATCH, SignalNoiseData, balanced_labels, sample_examples
from initmatters_core.tasks.synthetic.settings import DataSettings
from initmatters_core.tasks.synthetic.skew import NO_SKEW, ClientSkew, all_client_skews, log_spread

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
    skew = all_client_skews(heterogeneity, seed, num_partitions)[partition_id]
    return examples_for_labels(data, seed, partition_id, labels[partition_id], signal, skew)


def examples_for_labels(
    data: DataSettings,
    seed: int,
    partition_id: int,
    true_labels: np.ndarray,
    signal: torch.Tensor,
    skew: ClientSkew = NO_SKEW,
) -> SignalNoiseData:
    """Client `partition_id`'s examples for its true labels, from its own CLIENT_DATA stream, with its
    noise and signal factors (`skew.ClientSkew`; factors of exactly 1 leave every number unchanged)."""
    rng = numpy_rng(seed, Stream.CLIENT_DATA, partition_id)
    return sample_examples(rng.permutation(true_labels), signal * skew.signal, data.noise_std * skew.noise,
                           data.label_noise, rng)


def noise_scale(data: SignalNoiseData, noise_std: float) -> float:
    """A client's measured noise level relative to sigma_p: sqrt(sum_i ||xi_i||^2 / (n (d - 1))) / sigma_p
    (the noise lives in the d - 1 directions orthogonal to mu); NaN for an empty client."""
    noise = data.noise.double()
    dim = noise.shape[1]
    return float(noise.square().sum() / (noise.shape[0] * (dim - 1))) ** 0.5 / noise_std


def signal_scale(data: SignalNoiseData, signal_norm: float) -> float:
    """A client's measured signal strength relative to ||mu||: the mean signal-patch norm / ||mu||."""
    return float(data.features[:, SIGNAL_PATCH, :].double().norm(dim=1).mean()) / signal_norm


@dataclass(frozen=True)
class SkewMeasures:
    """The realised skews of a federation's training data, measured on the data themselves."""

    noise_scales: list[float]  # client k's noise_scale, in position k
    signal_scales: list[float]  # client k's signal_scale, in position k

    @property
    def noise_skew(self) -> float:
        """Realised noise skew: std over clients of log(noise_scale); compare heterogeneity.noise_skew."""
        return log_spread(np.array(self.noise_scales))

    @property
    def signal_skew(self) -> float:
        """Realised signal skew: std over clients of log(signal_scale); compare heterogeneity.signal_skew."""
        return log_spread(np.array(self.signal_scales))


def measure_skews(
    data: DataSettings, seed: int, client_labels: list[np.ndarray], skews: list[ClientSkew], signal: torch.Tensor
) -> SkewMeasures:
    """Generate every client's training data (as the clients do, one at a time; client k's true labels
    and factors in position k) and measure its scales."""
    noise_scales, signal_scales = [], []
    for partition_id, (labels, skew) in enumerate(zip(client_labels, skews, strict=True)):
        examples = examples_for_labels(data, seed, partition_id, labels, signal, skew)
        noise_scales.append(noise_scale(examples, data.noise_std))
        signal_scales.append(signal_scale(examples, data.signal_norm))
    return SkewMeasures(noise_scales=noise_scales, signal_scales=signal_scales)
