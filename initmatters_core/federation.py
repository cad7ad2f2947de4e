"""Federation helpers shared by every task: who trains when, who holds what, and how skewed it is.

No Flower, no Hydra. A task builds its clients' data from these pure functions, so a client's
share is a function of (labels, heterogeneity settings, K, seed) alone and is the same in
simulation and on a device.

- `client_schedule`: the partition-ids trained in each round, drawn up front from the seed.
- `ClientDataCache`: a per-process, byte-bounded LRU map for client data (a client's data is a
  pure function of its arguments, so a process that trains a partition again reuses it).
- `make_partitioner` / `partition_rows`: the one partitioner factory of the project, over any
  label array: `label_skew` (this project's `LabelSkewPartitioner`, binary labels +1/-1, realises
  h exactly), and flwr-datasets' `IidPartitioner`, `DirichletPartitioner` and
  `PathologicalPartitioner`, seeded from the experiment seed's PARTITIONER stream (a Dirichlet
  partition below min_partition_size is redrawn by partitioners of new seeds, a bounded number of times).
- `weighted_average`: FedAvg's example-weighted average (server-side federated pre-training).
- `resolve_device`: fl.device as a torch.device.
- `label_histograms`, `heterogeneity_measure` (H), `mean_total_variation`, `partition_summary`
  (partition.json), `stratified_split`.

Heterogeneity measure. With p_k the label distribution of client k, q the label distribution of
all clients' data pooled, and TV(p, q) = (1/2) sum_c |p_c - q_c|:

    H = (1/K') sum_k TV(p_k, q) / (1 - min_c q_c)      (K' = clients holding data)

H is in [0, 1]: 0 when every client has the pooled label mix (IID); the divisor is the largest
TV any label distribution can have from q, so with a balanced pool H = 1 exactly when every
client holds a single class. For a binary task with a balanced pool,
TV(p_k, q) = |n_k+ - n_k-| / (2 n_k) and 1 - min q = 1/2, so H equals the paper's
h = (1/K) sum_k |n_k+ - n_k-| / n_k exactly.

`datasets` and `flwr_datasets` are imported where they are used: flwr_datasets' package
__init__ pulls seaborn and scipy (over a second per process), and label_skew needs neither.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from initmatters_core.seeding import Stream, int_seed, numpy_rng
from initmatters_core.settings import HeterogeneitySettings, SettingError

if TYPE_CHECKING:
    import datasets
    from flwr_datasets.partitioner import Partitioner

PARTITION_SCHEMES = ("label_skew", "iid", "dirichlet", "pathological")
ROW_COLUMN = "row"
LABEL_COLUMN = "label"


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


def weighted_average(tensors: Sequence[torch.Tensor], num_examples: Sequence[int]) -> torch.Tensor:
    """FedAvg's example-weighted average sum_k (n_k / sum n) t_k (of one tensor: its values, bit for bit)."""
    total = float(sum(num_examples))
    return torch.stack([t * (n / total) for t, n in zip(tensors, num_examples, strict=True)]).sum(dim=0)


def check_partition_id(partition_id: int, num_partitions: int) -> None:
    """One-line ValueError unless 0 <= partition_id < num_partitions."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id={partition_id} is out of range: allowed 0..{num_partitions - 1}")


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes held by the elements of `tensors`."""
    return sum(t.element_size() * t.nelement() for t in tensors)


class ClientDataCache:
    """A thread-safe least-recently-used map key -> client data, bounded by the data's bytes.

    Keys are the explicit (hashable, frozen) arguments the data is a pure function of; cached
    tensors are never written to (training only reads the features).
    """

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


def resolve_device(name: str) -> torch.device:
    """fl.device as a torch.device: auto = cuda when this process sees a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingError("fl.device=cuda is invalid here: allowed cpu|auto (torch.cuda.is_available() is False)")
    return torch.device(name)


# --- partitions -----------------------------------------------------------------------------------


def label_skew_split(labels: np.ndarray, num_partitions: int, h: float) -> list[np.ndarray]:
    """Indices into binary `labels` (+1/-1) of each client's examples under label skew h.

    Client k holds round(n (1 + h) / 2) examples of its majority label (+1 for even k, -1 for
    odd k) and the rest of the other label, so |n+ - n-| / n = h for every client when
    n (1 + h) / 2 is an integer (otherwise the nearest realisable value). Needs an even number
    of partitions and a balanced pool of num_partitions * n labels.
    """
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
        """flwr-datasets Partitioner of `label_skew_split` (binary labels, exact h in [0, 1])."""

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

    LabelSkewPartitioner.__module__ = __name__  # so it pickles as initmatters_core.federation.LabelSkewPartitioner
    LabelSkewPartitioner.__qualname__ = "LabelSkewPartitioner"
    return LabelSkewPartitioner


def __getattr__(name: str) -> Any:
    """`initmatters_core.federation.LabelSkewPartitioner`, built on first access (see above)."""
    if name == "LabelSkewPartitioner":
        return _label_skew_partitioner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_partitioner(
    heterogeneity: HeterogeneitySettings, num_partitions: int, seed: int, attempt: int = 0
) -> Partitioner:
    """The flwr-datasets partitioner of a heterogeneity scheme (not yet given a dataset).

    `attempt` > 0 seeds the partitioner anew (Dirichlet redraws, see `partition_rows`).
    """
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if heterogeneity.name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if heterogeneity.name == "label_skew":
        return _label_skew_partitioner_class()(num_partitions, heterogeneity.h)
    index = (attempt,) if attempt else ()
    partitioner_seed = int_seed(seed, Stream.PARTITIONER, *index) % (2**32)
    if heterogeneity.name == "dirichlet":
        min_size = heterogeneity.min_partition_size
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=LABEL_COLUMN,
            alpha=heterogeneity.alpha,
            min_partition_size=1 if min_size is None else min_size,  # >= 1: no client without data
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
    raise SettingError(f"heterogeneity={heterogeneity.name!r} is invalid: allowed {'|'.join(PARTITION_SCHEMES)}")


DIRICHLET_ATTEMPTS = 300  # seeded flwr-datasets Dirichlet partitioners tried, each with its own 11 draws


def partition_rows(
    labels: np.ndarray, heterogeneity: HeterogeneitySettings, num_partitions: int, seed: int
) -> tuple[list[np.ndarray], int]:
    """(row indices (int64) of every client's examples, client k's in position k; attempts) of a label array.

    label_skew takes `label_skew_split` directly (no datasets/flwr_datasets import: a ClientApp
    process in deployment need not pay for them); the other schemes run their flwr-datasets
    partitioner on an in-memory Dataset of (row, label). `attempts` is 1 except for a Dirichlet
    partition that flwr-datasets could not bring to heterogeneity.min_partition_size in its own 11
    draws: it is then redrawn by a partitioner of a new seed (attempt a >= 1 seeded from
    (seed, PARTITIONER, a), so attempt 0 is the partition of earlier versions), at most
    DIRICHLET_ATTEMPTS times, and a one-line SettingError naming what would work after that (at
    once when K clients cannot all hold min_partition_size examples).
    """
    labels = np.asarray(labels)
    if heterogeneity.name == "label_skew":
        return label_skew_split(labels, num_partitions, heterogeneity.h), 1
    min_size = heterogeneity.min_partition_size
    if heterogeneity.name == "dirichlet" and min_size is not None and min_size * num_partitions > labels.shape[0]:
        raise SettingError(
            f"heterogeneity.min_partition_size={min_size} is invalid: allowed at most "
            f"{labels.shape[0] // num_partitions} ({labels.shape[0]} examples over fl.num_clients={num_partitions})"
        )
    import datasets

    dataset = datasets.Dataset.from_dict({ROW_COLUMN: np.arange(labels.shape[0], dtype=np.int64), LABEL_COLUMN: labels})
    attempts = DIRICHLET_ATTEMPTS if heterogeneity.name == "dirichlet" else 1
    for attempt in range(attempts):
        partitioner = make_partitioner(heterogeneity, num_partitions, seed, attempt)
        partitioner.dataset = dataset
        try:
            with warnings.catch_warnings():  # flwr-datasets warns at each of its own redraws
                warnings.filterwarnings("ignore", message="The specified min_partition_size")
                return [
                    np.asarray(partitioner.load_partition(k).with_format("numpy")[:][ROW_COLUMN], dtype=np.int64)
                    for k in range(num_partitions)
                ], attempt + 1
        except ValueError as error:
            if heterogeneity.name != "dirichlet" or "max number of attempts" not in str(error):
                raise
    raise SettingError(
        f"heterogeneity.alpha={heterogeneity.alpha!r} is invalid with fl.num_clients={num_partitions} and "
        f"{labels.shape[0] / num_partitions:g} examples per client: {attempts} seeded Dirichlet partitioners "
        f"(11 draws each) left a client below heterogeneity.min_partition_size={heterogeneity.min_partition_size}; "
        "allowed a larger alpha, a smaller min_partition_size, fewer clients or more examples per client"
    )


def label_histograms(labels: np.ndarray, indices: Sequence[np.ndarray], classes: Sequence[int]) -> np.ndarray:
    """[K, C] int64: how many examples of class value classes[c] every client holds."""
    labels = np.asarray(labels, dtype=np.int64)
    values = np.asarray(list(classes), dtype=np.int64)
    rows = [(labels[part][:, None] == values[None, :]).sum(axis=0) for part in indices]
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, len(values)), dtype=np.int64)


def _client_tv(histograms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TV(p_k, q) of every client holding data, pooled distribution q)."""
    counts = np.asarray(histograms, dtype=np.float64)
    sizes = counts.sum(axis=1)
    held = sizes > 0
    if not held.any():
        return np.zeros(0), np.zeros(counts.shape[1])
    pooled = counts.sum(axis=0) / counts.sum()
    client = counts[held] / sizes[held, None]
    return 0.5 * np.abs(client - pooled).sum(axis=1), pooled


def mean_total_variation(histograms: np.ndarray) -> float:
    """(1/K') sum_k TV(p_k, q) over the clients holding data (0 if none)."""
    tv, _ = _client_tv(histograms)
    return float(tv.mean()) if tv.size else 0.0


def heterogeneity_measure(histograms: np.ndarray) -> float:
    """H = mean_k TV(p_k, q) / (1 - min_c q_c) in [0, 1]: the paper's h for balanced binary tasks.

    Classes absent from the pool are ignored in min_c q_c; a pool of one class gives 0.
    """
    tv, pooled = _client_tv(histograms)
    present = pooled[pooled > 0]
    if not tv.size or present.size < 2:
        return 0.0
    return float(tv.mean() / (1.0 - present.min()))


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows): round(fraction * n_c) random rows of every class c held out.

    Used for the fixed digits test split and for a server's proxy set for central pre-training.
    Both arrays are sorted.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    held = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        held.append(rng.permutation(rows)[: int(round(fraction * rows.shape[0]))])
    held_rows = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(labels.shape[0]), held_rows)
    return kept.astype(np.int64), held_rows.astype(np.int64)


def partition_summary(
    histograms: np.ndarray, heterogeneity: float, class_names: Sequence[str], attempts: int
) -> dict[str, Any]:
    """partition.json: per-client sizes and label histograms ([K, C]), the heterogeneity H and the
    partitioner's attempts (`partition_rows`)."""
    counts = np.asarray(histograms, dtype=np.int64)
    return {
        "num_partitions": int(counts.shape[0]),
        "classes": list(class_names),
        "sizes": counts.sum(axis=1).tolist(),
        "histograms": counts.tolist(),
        "heterogeneity": float(heterogeneity),
        "partitioner_attempts": int(attempts),
    }
