"""The task module: what a client does in a round and what the server sets up and measures.

Plain functions over tensors and typed settings; client_app/ and server_app/ adapt them to
Flower messages. Settings travel to clients as a flat {"section.key": value} mapping, so a
client needs nothing but the message and its partition-id.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from initmatters.alignment import noise_memorization_summary
from initmatters.data import SignalNoiseData, fresh_test_set, signal_vector
from initmatters.initialization import initial_weight
from initmatters.model import classification_error, logistic_loss, model_from_weight
from initmatters.partition import examples_for_labels, partition_true_labels, realised_heterogeneity
from initmatters.seeding import Stream, numpy_rng, torch_generator
from initmatters.settings import DataSettings, ExperimentSettings, HeterogeneitySettings
from initmatters.training import train_steps

Scalar = bool | int | float | str


def flatten_settings(settings: ExperimentSettings) -> dict[str, Scalar]:
    """{"seed": 0, "data.dim": 1000, ...}; unset (None) options are left out."""
    flat: dict[str, Scalar] = {}
    for key, value in settings.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items() if item is not None})
        else:
            flat[key] = value
    return flat


def unflatten_settings(flat: Mapping[str, Any]) -> ExperimentSettings:
    """Inverse of flatten_settings (validates); keys without a dot other than seed are ignored."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if dot:
            nested.setdefault(section, {})[name] = value
        elif key == "seed":
            nested[key] = value
    return ExperimentSettings.from_dict(nested)


def client_schedule(num_clients: int, fraction: float, num_rounds: int, seed: int) -> list[list[int]]:
    """Partition-ids trained in each round, drawn up front from the seed.

    All clients when fraction = 1; else max(1, round(fraction K)) clients without replacement
    each round (sorted). Independent of the initialization, so paired runs share it.
    """
    if fraction >= 1.0:
        return [list(range(num_clients)) for _ in range(num_rounds)]
    rng = numpy_rng(seed, Stream.CLIENT_SAMPLING)
    size = max(1, int(round(fraction * num_clients)))
    return [sorted(int(k) for k in rng.choice(num_clients, size=size, replace=False)) for _ in range(num_rounds)]


# ---------------------------------------------------------------------------------------------
# Per-process caches of client data. A client's data is a pure function of (data settings,
# heterogeneity settings, seed, partition-id, number of partitions), so a process that trains a
# partition again (a Ray actor in simulation, a SuperNode in deployment, a plain loop) can reuse
# it instead of rebuilding the label partition (flwr-datasets, tens of ms for 10 clients, seconds
# for 1000) and redrawing the features every round. Keys are the explicit (hashable, frozen)
# arguments; the cached tensors are never written to (training only reads the features).

DATA_CACHE_BYTES = 256 * 2**20  # per process: all 1000 clients of d = 1000, n = 20 (160 KB each)


@functools.lru_cache(maxsize=4)
def _partition_labels(
    heterogeneity: HeterogeneitySettings, seed: int, num_partitions: int, samples_per_client: int
) -> tuple[np.ndarray, ...]:
    labels = partition_true_labels(heterogeneity, seed, num_partitions, samples_per_client)
    for part in labels:
        part.setflags(write=False)
    return tuple(labels)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes held by the elements of `tensors`."""
    return sum(t.element_size() * t.nelement() for t in tensors)


class ClientDataCache:
    """A thread-safe least-recently-used map key -> client data, bounded by the data's bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: tuple, data: Any, size: int) -> None:
        """Keep `data` (of `size` bytes) unless it alone exceeds the bound; evict the oldest."""
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return
            self._items[key] = (data, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_client_data_cache = ClientDataCache(DATA_CACHE_BYTES)


def cached_client_dataset(
    data: DataSettings,
    heterogeneity: HeterogeneitySettings,
    seed: int,
    partition_id: int,
    num_partitions: int,
) -> SignalNoiseData:
    """`initmatters.partition.client_dataset` for mu = signal_vector(data), memoized per process.

    Same numbers as client_dataset (same label partition, same CLIENT_DATA stream); the label
    partition of all clients is computed once per process instead of once per call.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id={partition_id} is out of range: allowed 0..{num_partitions - 1}")
    key = (data, heterogeneity, seed, partition_id, num_partitions)
    cached = _client_data_cache.get(key)
    if cached is not None:
        return cached
    labels = _partition_labels(heterogeneity, seed, num_partitions, data.samples_per_client)
    signal = signal_vector(data.dim, data.signal_norm)
    result = examples_for_labels(data, seed, partition_id, labels[partition_id], signal)
    _client_data_cache.put(key, result, tensor_bytes(result.features, result.labels, result.true_labels))
    return result


def clear_client_data_cache() -> None:
    """Drop this process's cached client data and label partitions."""
    _client_data_cache.clear()
    _partition_labels.cache_clear()


@dataclass(frozen=True)
class ClientUpdate:
    """What a client returns: its trained weight, its sample count and summary metrics."""

    weight: torch.Tensor  # [2, m, d]
    num_examples: int
    metrics: dict[str, float]


def local_update(
    settings: ExperimentSettings,
    partition_id: int,
    num_partitions: int,
    global_weight: torch.Tensor,
    init_weight: torch.Tensor | None,
    server_round: int,
) -> ClientUpdate:
    """One client's round: tau local (S)GD steps from the global model on its own partition.

    Metrics: train_loss (after local training) and, when w(0) is given, the noise memorization
    rho of the local model on the client's own noise patches (never the data itself).
    """
    if num_partitions != settings.fl.num_clients:
        raise ValueError(
            f"num-partitions={num_partitions} in the node config does not match the run's "
            f"fl.num_clients={settings.fl.num_clients}"
        )
    data = cached_client_dataset(settings.data, settings.heterogeneity, settings.seed, partition_id, num_partitions)
    model = model_from_weight(global_weight)
    train_loss = train_steps(
        model,
        data.features,
        data.labels,
        logistic_loss,
        steps=settings.fl.local_steps,
        lr=settings.fl.lr,
        batch_size=settings.fl.batch_size,
        generator=torch_generator(settings.seed, Stream.LOCAL_BATCHES, partition_id, server_round),
    )
    weight = model.weight.detach()
    metrics = {"train_loss": train_loss}
    if init_weight is not None:
        metrics.update(noise_memorization_summary(init_weight, weight, data.noise, data.labels))
    return ClientUpdate(weight=weight, num_examples=len(data), metrics=metrics)


@torch.no_grad()
def central_metrics(weight: torch.Tensor, test: SignalNoiseData) -> dict[str, float]:
    """Test loss and test error of a global model on the server's test set."""
    model = model_from_weight(weight)
    margins = model(test.features)
    return {
        "test_loss": float(logistic_loss(margins, test.labels)),
        "test_error": classification_error(margins, test.labels),
    }


@dataclass(frozen=True)
class ServerSetup:
    """Everything the server derives from the settings before round 1."""

    signal: torch.Tensor  # mu, [d]
    init_weight: torch.Tensor  # w(0), [2, m, d]
    test: SignalNoiseData
    realised_h: float
    client_sizes: list[int]
    label_counts: np.ndarray  # [K, 2]: examples with true label +1 and -1 held by each client
    schedule: list[list[int]]


def server_setup(settings: ExperimentSettings) -> ServerSetup:
    """Signal, initial model (pre-training included), test set, partition facts, schedule."""
    signal = signal_vector(settings.data.dim, settings.data.signal_norm)
    labels = partition_true_labels(
        settings.heterogeneity, settings.seed, settings.fl.num_clients, settings.data.samples_per_client
    )
    return ServerSetup(
        signal=signal,
        init_weight=initial_weight(settings.init, settings.model, signal, settings.seed),
        test=fresh_test_set(
            settings.seed, signal, settings.data.noise_std, settings.data.label_noise, settings.data.test_samples
        ),
        realised_h=realised_heterogeneity(labels),
        client_sizes=[int(part.shape[0]) for part in labels],
        label_counts=np.array([[int((part == 1).sum()), int((part == -1).sum())] for part in labels], dtype=np.int64),
        schedule=client_schedule(
            settings.fl.num_clients, settings.fl.fraction_train, settings.fl.num_rounds, settings.seed
        ),
    )


def finite_or_none(value: float) -> float | None:
    """JSON-safe float: None for NaN/inf."""
    return value if math.isfinite(value) else None

