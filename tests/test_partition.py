"""Label partitions over clients (docs/science.md, "Heterogeneity") and client datasets."""

from __future__ import annotations

import pickle
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch

from initmatters.compose import load_settings
from initmatters_core.federation import DIRICHLET_ATTEMPTS, LABEL_COLUMN, LabelSkewPartitioner, make_partitioner
from initmatters_core.seeding import Stream, int_seed, numpy_rng
from initmatters_core.settings import HeterogeneitySettings, SettingError
from initmatters_core.tasks.synthetic.data import balanced_labels, signal_vector
from initmatters_core.tasks.synthetic.partition import (
    client_dataset,
    label_imbalance,
    partition_true_labels,
    realised_heterogeneity,
)
from initmatters_core.tasks.synthetic.settings import DataSettings
from initmatters_core.tasks.synthetic.task import check_before_start, skew_warnings

# flwr-datasets warns each time it resamples a Dirichlet draw below min_partition_size.
pytestmark = pytest.mark.filterwarnings("ignore:The specified min_partition_size")

K, N = 10, 20

SCHEMES = {
    "iid": HeterogeneitySettings(name="iid"),
    "label_skew": HeterogeneitySettings(name="label_skew", h=0.5),
    "dirichlet": HeterogeneitySettings(name="dirichlet", alpha=0.5, min_partition_size=2),
    "pathological": HeterogeneitySettings(name="pathological", classes_per_client=1),
}


def _pool(num: int, seed: int = 0) -> datasets.Dataset:
    """A balanced label pool with an `idx` column so partitions can be traced back."""
    labels = balanced_labels(num, np.random.default_rng(seed))
    return datasets.Dataset.from_dict({LABEL_COLUMN: labels.tolist(), "idx": list(range(num))})


def _partition_indices(partitioner, pool: datasets.Dataset) -> list[list[int]]:
    partitioner.dataset = pool
    return [list(partitioner.load_partition(k)["idx"]) for k in range(partitioner.num_partitions)]


def _hand_imbalance(labels) -> float:
    plus = sum(1 for y in labels if y == 1)
    minus = sum(1 for y in labels if y == -1)
    return abs(plus - minus) / len(labels)


@pytest.mark.parametrize("h", [0.0, 0.5, 1.0])
def test_label_skew_realises_h_exactly_per_client(h: float) -> None:
    labels, _ = partition_true_labels(HeterogeneitySettings(name="label_skew", h=h), 0, K, N)
    assert len(labels) == K
    for k, part in enumerate(labels):
        assert part.shape == (N,)
        assert set(part.tolist()) <= {-1, 1}
        assert _hand_imbalance(part.tolist()) == h
        plus = int((part == 1).sum())
        # Majority label +1 for even k, -1 for odd k, with n (1 + h) / 2 majority samples.
        majority_count = int(N * (1 + h) / 2)
        assert plus == (majority_count if k % 2 == 0 else N - majority_count)
    assert realised_heterogeneity(labels) == h


def test_label_skew_partitions_are_disjoint_and_cover_pool() -> None:
    pool = _pool(K * N, seed=3)
    parts = _partition_indices(LabelSkewPartitioner(K, 0.5), pool)
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)) == K * N
    assert sorted(flat) == list(range(K * N))
    pool_labels = pool[LABEL_COLUMN]
    for k, part in enumerate(parts):
        plus = sum(1 for i in part if pool_labels[i] == 1)
        assert plus == (15 if k % 2 == 0 else 5)


def test_label_skew_rejects_odd_partitions_and_unbalanced_pool() -> None:
    with pytest.raises(ValueError):
        LabelSkewPartitioner(3, 0.5)
    partitioner = LabelSkewPartitioner(2, 1.0)
    partitioner.dataset = datasets.Dataset.from_dict({LABEL_COLUMN: [1, 1, 1, -1]})
    with pytest.raises(ValueError):
        partitioner.load_partition(0)


def test_realised_heterogeneity_matches_hand_computation() -> None:
    clients = [
        np.array([1, 1, 1, -1]),  # |3 - 1| / 4 = 0.5
        np.array([-1, -1]),  # 1
        np.array([1, -1, 1, -1, 1, -1]),  # 0
        np.array([-1, -1, -1, 1, -1]),  # 3/5
    ]
    assert realised_heterogeneity(clients) == pytest.approx((0.5 + 1.0 + 0.0 + 0.6) / 4, abs=1e-15)
    assert label_imbalance(np.array([], dtype=np.int64)) == 0.0
    assert label_imbalance(np.array([1, 1, -1])) == pytest.approx(1 / 3, abs=1e-15)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "label_skew"])
def test_partitioners_are_disjoint_and_covering(scheme: str) -> None:
    pool = _pool(K * N, seed=1)
    parts = _partition_indices(make_partitioner(SCHEMES[scheme], K, seed=0), pool)
    assert len(parts) == K
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat) == list(range(K * N))  # covering


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "label_skew"])
def test_partition_true_labels_cover_balanced_pool_and_are_seeded(scheme: str) -> None:
    labels, _ = partition_true_labels(SCHEMES[scheme], 0, K, N)
    assert len(labels) == K
    assert sum(part.shape[0] for part in labels) == K * N
    everything = np.concatenate(labels)
    assert int((everything == 1).sum()) == int((everything == -1).sum()) == K * N // 2
    again, _ = partition_true_labels(SCHEMES[scheme], 0, K, N)
    for a, b in zip(labels, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_dirichlet_depends_on_seed_and_respects_min_size() -> None:
    a, _ = partition_true_labels(SCHEMES["dirichlet"], 0, K, N)
    b, _ = partition_true_labels(SCHEMES["dirichlet"], 1, K, N)
    assert [len(p) for p in a] != [len(p) for p in b]
    assert min(len(p) for p in a) >= 2 and min(len(p) for p in b) >= 2


def test_pathological_one_class_per_client_has_h_one() -> None:
    labels, _ = partition_true_labels(SCHEMES["pathological"], 0, K, N)
    for part in labels:
        assert len(np.unique(part)) == 1
    assert realised_heterogeneity(labels) == 1.0


def test_iid_is_nearly_balanced() -> None:
    labels, _ = partition_true_labels(SCHEMES["iid"], 0, K, 200)
    assert all(part.shape[0] == 200 for part in labels)
    assert realised_heterogeneity(labels) < 0.2  # E|n+ - n-|/n ~ 0.056 for n = 200


def _data_settings(**changes) -> DataSettings:
    values = dict(dim=15, signal_norm=1.5, noise_std=1.0, label_noise=0.0, samples_per_client=N,
                  test_samples=100, population_samples=0)
    values.update(changes)
    return DataSettings(**values)


def test_client_dataset_is_a_pure_function() -> None:
    data, het, mu = _data_settings(), SCHEMES["label_skew"], signal_vector(15, 1.5)
    a = client_dataset(data, het, 7, 3, K, mu)
    b = client_dataset(data, het, 7, 3, K, mu)
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.true_labels, b.true_labels)
    # Its labels are exactly the partition's labels (client 3 is odd: majority -1).
    expected = partition_true_labels(het, 7, K, N)[0][3]
    assert sorted(a.true_labels.int().tolist()) == sorted(expected.tolist())
    assert int((a.true_labels == -1).sum()) == 15


def test_client_dataset_differs_across_partitions_and_seeds() -> None:
    data, het, mu = _data_settings(), SCHEMES["iid"], signal_vector(15, 1.5)
    base = client_dataset(data, het, 7, 0, K, mu)
    other_client = client_dataset(data, het, 7, 1, K, mu)
    other_seed = client_dataset(data, het, 8, 0, K, mu)
    assert not torch.equal(base.noise, other_client.noise)
    assert not torch.equal(base.noise, other_seed.noise)
    assert not np.any(base.noise.numpy()[:, 1:] == other_client.noise.numpy()[:, 1:])


@pytest.mark.parametrize("partition_id", [-1, K, K + 5])
def test_client_dataset_rejects_out_of_range_partition(partition_id: int) -> None:
    with pytest.raises(ValueError, match="partition-id"):
        client_dataset(_data_settings(), SCHEMES["iid"], 0, partition_id, K, signal_vector(15, 1.5))


def test_import_does_not_load_flwr_datasets() -> None:
    """flwr_datasets pulls seaborn and scipy (~1.3 s): imported only when a partition is made."""
    code = ("import sys, initmatters_core.tasks.synthetic.partition; "
            "print(sorted({'flwr_datasets', 'datasets'} & set(sys.modules)))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert completed.stdout.strip() == "[]"


def test_label_skew_partitioner_is_one_flwr_datasets_partitioner_class() -> None:
    from flwr_datasets.partitioner import Partitioner

    from initmatters_core import federation

    assert issubclass(LabelSkewPartitioner, Partitioner)
    assert federation.LabelSkewPartitioner is LabelSkewPartitioner
    assert type(make_partitioner(SCHEMES["label_skew"], K, seed=0)) is LabelSkewPartitioner
    assert pickle.loads(pickle.dumps(LabelSkewPartitioner(K, 0.5))).num_partitions == K
    with pytest.raises(AttributeError):
        _ = federation.NoSuchName


@pytest.mark.parametrize("h", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 5])
def test_label_skew_labels_equal_those_of_the_flwr_datasets_partitioner(h: float, seed: int) -> None:
    """partition_true_labels takes label_skew's split directly; LabelSkewPartitioner gives the same labels."""
    expected, _ = partition_true_labels(HeterogeneitySettings(name="label_skew", h=h), seed, K, N)
    pool = balanced_labels(K * N, numpy_rng(seed, Stream.LABEL_POOL))
    partitioner = LabelSkewPartitioner(K, h)
    partitioner.dataset = datasets.Dataset.from_dict({LABEL_COLUMN: pool.tolist()})
    for k in range(K):
        labels = np.asarray(partitioner.load_partition(k)[LABEL_COLUMN], dtype=np.int64)
        assert expected[k].dtype == labels.dtype
        np.testing.assert_array_equal(expected[k], labels)


def test_label_skew_labels_need_neither_datasets_nor_flwr_datasets() -> None:
    code = ("import sys; from initmatters_core.tasks.synthetic.partition import partition_true_labels; "
            "from initmatters_core.settings import HeterogeneitySettings; "
            "partition_true_labels(HeterogeneitySettings(name='label_skew', h=0.5), 0, 10, 20); "
            "print(sorted({'flwr_datasets', 'datasets'} & set(sys.modules)))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert completed.stdout.strip() == "[]"


# --- partitions that do not break (issue 10) -------------------------------------------------------

DIRICHLET_01 = HeterogeneitySettings(name="dirichlet", alpha=0.1, min_partition_size=2)


def test_dirichlet_01_succeeds_for_every_seed_at_the_default_sizes() -> None:
    """flwr-datasets alone gives up in 9 of seeds 0-9 (11 draws); seeded redraws always succeed.

    Each result is the partition of the flwr-datasets partitioner of its last attempt, and a
    first-attempt success is the partition of earlier versions (the partitioner of the seed alone).
    """
    pool_rows = np.arange(K * N)
    attempts_seen = []
    for seed in range(10):
        labels, attempts = partition_true_labels(DIRICHLET_01, seed, K, N)
        assert 1 <= attempts <= DIRICHLET_ATTEMPTS
        attempts_seen.append(attempts)
        assert min(part.shape[0] for part in labels) >= 2
        assert sum(part.shape[0] for part in labels) == K * N
        assert int((np.concatenate(labels) == 1).sum()) == K * N // 2
        pool = balanced_labels(K * N, numpy_rng(seed, Stream.LABEL_POOL))
        dataset = datasets.Dataset.from_dict({LABEL_COLUMN: pool.tolist(), "idx": pool_rows.tolist()})
        partitioner = make_partitioner(DIRICHLET_01, K, seed, attempts - 1)
        for part, rows in zip(labels, _partition_indices(partitioner, dataset), strict=True):
            np.testing.assert_array_equal(part, pool[rows])
    assert attempts_seen[4] == 1 and max(attempts_seen) > 11  # seed 4 needs no redraw; some need many


def test_first_attempt_partitioner_is_the_seed_stream_of_earlier_versions() -> None:
    """make_partitioner(..., attempt=0) is seeded exactly as before the redraws existed."""
    assert make_partitioner(DIRICHLET_01, K, 3)._rng.bit_generator.state == np.random.default_rng(
        int_seed(3, Stream.PARTITIONER) % 2**32).bit_generator.state
    assert make_partitioner(DIRICHLET_01, K, 3, 1)._rng.bit_generator.state == np.random.default_rng(
        int_seed(3, Stream.PARTITIONER, 1) % 2**32).bit_generator.state


def test_unreachable_dirichlet_fails_before_start_up_with_one_line_naming_alpha_k_and_n() -> None:
    """The bound of seeded redraws is hit: check_before_start (called before anything starts) says so."""
    settings = load_settings(["heterogeneity=dirichlet", "heterogeneity.alpha=0.001", "data.dim=10"])[0]
    with pytest.raises(SettingError) as error:
        check_before_start(settings)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("heterogeneity.alpha=0.001 is invalid with fl.num_clients=10 and 20 examples per client")
    assert "allowed a larger alpha" in message


@pytest.mark.parametrize("overrides", ["heterogeneity=dirichlet heterogeneity.min_partition_size=0",
                                       "heterogeneity=dirichlet_0.1 heterogeneity.min_partition_size=0"])
def test_a_client_without_data_is_impossible(overrides: str) -> None:
    """min_partition_size >= 1 is enforced, so no Dirichlet client is ever empty."""
    with pytest.raises(SettingError, match=r"^heterogeneity[.]min_partition_size=0 is invalid: allowed a positive"):
        load_settings(overrides.split())
    with pytest.raises(SettingError, match=r"^heterogeneity[.]min_partition_size=0 is invalid"):
        HeterogeneitySettings(name="dirichlet", alpha=0.1, min_partition_size=0).validate(("dirichlet",))


@pytest.mark.parametrize(("n", "h", "realised"), [(20, 0.25, 0.2), (15, 0.0, 1 / 15), (20, 0.5, None), (15, 1.0, None)])
def test_unrealisable_label_skew_is_a_warning_with_the_realised_h(n: int, h: float, realised: float | None) -> None:
    skew = HeterogeneitySettings(name="label_skew", h=h)
    labels, attempts = partition_true_labels(skew, 0, K, n)
    assert attempts == 1
    # Hand computation: round(n (1 + h) / 2) majority examples per client.
    majority = round(n * (1 + h) / 2)
    assert realised_heterogeneity(labels) == pytest.approx(abs(2 * majority - n) / n, abs=1e-15)
    lines = skew_warnings(skew, n, realised_heterogeneity(labels))
    if realised is None:
        assert lines == []
    else:
        assert lines == [f"heterogeneity.h={h:g} is not realisable with data.samples_per_client={n} "
                         f"(n (1 + h) / 2 must be an integer): realised h={realised:.4f}"]
