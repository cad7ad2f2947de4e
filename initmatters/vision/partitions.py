"""Label partitions of an image dataset over K clients, their histograms and heterogeneity.

`image_partitions` splits the rows of one split (given by its labels alone) with flwr-datasets'
IidPartitioner, DirichletPartitioner or PathologicalPartitioner, seeded from the experiment
seed's PARTITIONER stream, so a client's rows are a pure function of (labels, scheme, K, seed,
alpha / classes per client) and are the same in simulation and on a device.

Heterogeneity measure (recorded per run). With p_k the label distribution of client k, q the
label distribution of all clients' data pooled, and TV(p, q) = (1/2) sum_c |p_c - q_c|:

    H = (1/K') sum_k TV(p_k, q) / (1 - min_c q_c)      (K' = clients holding data)

H is in [0, 1]: 0 when every client has the pooled label mix (IID); the divisor is the largest
TV any label distribution can have from q, so with a balanced pool H = 1 exactly when every
client holds a single class. For a binary task with a
balanced pool, TV(p_k, q) = |n_k+ - n_k-| / (2 n_k) and 1 - min q = 1/2, so H equals the paper's
h = (1/K) sum_k |n_k+ - n_k-| / n_k exactly. The unnormalised mean TV is reported as well.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

from initmatters.results import write_bytes_atomic
from initmatters.seeding import Stream, int_seed
from initmatters.settings import SettingError

PARTITION_SCHEMES = ("iid", "dirichlet", "pathological")
_ROW_COLUMN = "row"
_LABEL_COLUMN = "label"


@dataclass(frozen=True)
class ImagePartition:
    """Rows of every client (client k's in position k), label histograms and heterogeneity."""

    indices: list[np.ndarray]  # int64 row indices into the split, per client
    histograms: np.ndarray  # [K, C] int64: examples of class c held by client k
    heterogeneity: float  # H, see the module docstring
    mean_tv: float  # (1/K') sum_k TV(p_k, q), unnormalised

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

    scheme "iid" (IidPartitioner), "dirichlet" (DirichletPartitioner(alpha), redrawn by
    flwr-datasets until every client has `min_partition_size` rows, at most 10 times) or
    "pathological" (PathologicalPartitioner, `classes_per_client` classes per client assigned
    deterministically: client k gets classes k, k+1, ... mod C). `num_classes` defaults to
    max(label) + 1. Setting errors are one-line `SettingError`s.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None and labels.size else int(num_classes or 0)
    _validate(labels, scheme, num_partitions, alpha, classes_per_client, num_classes, min_partition_size)
    partitioner_seed = int_seed(seed, Stream.PARTITIONER) % (2**32)
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by=_LABEL_COLUMN, alpha=alpha,
            min_partition_size=min_partition_size, self_balancing=False, shuffle=True, seed=partitioner_seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions, partition_by=_LABEL_COLUMN, num_classes_per_partition=classes_per_client,
            class_assignment_mode="deterministic", shuffle=True, seed=partitioner_seed,
        )
    partitioner.dataset = datasets.Dataset.from_dict(
        {_ROW_COLUMN: np.arange(labels.shape[0], dtype=np.int64), _LABEL_COLUMN: labels}
    )
    try:
        indices = [
            np.asarray(partitioner.load_partition(k).with_format("numpy")[:][_ROW_COLUMN], dtype=np.int64)
            for k in range(num_partitions)
        ]
    except ValueError as error:
        if scheme != "dirichlet":
            raise
        raise SettingError(
            f"heterogeneity.alpha={alpha!r} is invalid: allowed a larger value (11 Dirichlet draws left a client "
            f"with fewer than {min_partition_size} examples; flwr-datasets: {error})"
        ) from None
    histograms = label_histograms(labels, indices, num_classes)
    return ImagePartition(
        indices=indices,
        histograms=histograms,
        heterogeneity=heterogeneity_measure(histograms),
        mean_tv=mean_total_variation(histograms),
    )


def _validate(
    labels: np.ndarray, scheme: str, num_partitions: int, alpha: float | None, classes_per_client: int | None,
    num_classes: int, min_partition_size: int,
) -> None:
    if scheme not in PARTITION_SCHEMES:
        raise SettingError(f"heterogeneity={scheme!r} is invalid: allowed {'|'.join(PARTITION_SCHEMES)}")
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
        if not isinstance(min_partition_size, int) or min_partition_size < 0:
            raise SettingError(
                f"heterogeneity.min_partition_size={min_partition_size!r} is invalid: allowed an integer >= 0"
            )
    if scheme == "pathological":
        present = int(np.unique(labels).shape[0])
        ok = isinstance(classes_per_client, int) and not isinstance(classes_per_client, bool)
        if not ok or not 1 <= classes_per_client <= present:
            raise SettingError(
                f"heterogeneity.classes_per_client={classes_per_client!r} is invalid: allowed an integer in "
                f"[1, {present}] (the classes present)"
            )


def label_histograms(labels: np.ndarray, indices: list[np.ndarray], num_classes: int) -> np.ndarray:
    """[K, C] int64: how many examples of each class every client holds."""
    labels = np.asarray(labels, dtype=np.int64)
    rows = [np.bincount(labels[part], minlength=num_classes)[:num_classes] for part in indices]
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, num_classes), dtype=np.int64)


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


def plot_label_histograms(histograms: np.ndarray, path: str | Path, title: str = "") -> Path:
    """PNG of the per-client label histograms, written atomically; returns the path.

    Up to 20 classes: one stacked bar per client (colour = class); more classes: a heat map
    clients x classes (the count in each cell).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    counts = np.asarray(histograms)
    num_clients, num_classes = counts.shape
    figure, axes = pyplot.subplots(figsize=(max(4.0, 0.45 * num_clients + 2.5), 3.6))
    try:
        clients = np.arange(num_clients)
        if num_classes <= 20:
            colours = pyplot.get_cmap("tab20" if num_classes > 10 else "tab10")
            bottom = np.zeros(num_clients)
            for label in range(num_classes):
                axes.bar(clients, counts[:, label], bottom=bottom, color=colours(label), label=str(label), width=0.8)
                bottom += counts[:, label]
            axes.set_ylabel("examples")
            axes.legend(title="class", fontsize="x-small", title_fontsize="small", loc="center left",
                        bbox_to_anchor=(1.0, 0.5), ncol=1 if num_classes <= 10 else 2)
        else:
            image = axes.imshow(counts.T, aspect="auto", interpolation="nearest", cmap="viridis")
            axes.set_ylabel("class")
            figure.colorbar(image, ax=axes, label="examples")
        axes.set_xticks(clients)
        axes.set_xlabel("client")
        heterogeneity = heterogeneity_measure(counts)
        axes.set_title(f"{title + ': ' if title else ''}label histograms (H = {heterogeneity:.3f})", fontsize="small")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        pyplot.close(figure)
    target = Path(path)
    write_bytes_atomic(target, buffer.getvalue())
    return target
