"""AlignmentTrackingFedAvg and the client schedule, driven by hand-built Flower messages.

No simulation: replies are built directly from Metadata, instructions with a fake Grid. Every
expected value is computed independently here (numpy float64 averages, plain-torch counts).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from initmatters.alignment import alignment_report
from initmatters.federated import client_schedule
from strategies.alignment_fedavg import (
    INIT_ARRAYS_KEY,
    AlignmentTrackingFedAvg,
    arrays_to_weight,
    weight_to_arrays,
)

DIM, FILTERS = 40, 6
# Node ids deliberately not monotone in the partition id: sorting by node id would give the
# partition order 1, 2, 0 (and the reply order is shuffled on top).
NODE_OF_PARTITION = {0: 9007, 1: 15, 2: 4242}
NUM_EXAMPLES = {0: 7, 1: 19, 2: 31}
TRAIN_LOSS = {0: 0.25, 1: 0.5, 2: 1.125}


# ---------------------------------------------------------------------------------------------
# helpers


def _signal() -> torch.Tensor:
    mu = torch.zeros(DIM)
    mu[0] = 1.5
    return mu


def _random_weight(seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(2, FILTERS, DIM, generator=gen)).to(torch.float32)


def _metadata(src_node: int, message_id: str, server_round: int = 1) -> Metadata:
    return Metadata(
        run_id=77,
        message_id=message_id,
        src_node_id=src_node,
        dst_node_id=0,
        reply_to_message_id=f"instr-{message_id}",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )


def _reply(partition: int, weight: torch.Tensor, server_round: int = 1) -> Message:
    metrics = MetricRecord({"train_loss": TRAIN_LOSS[partition], "num-examples": NUM_EXAMPLES[partition]})
    content = RecordDict({"arrays": weight_to_arrays(weight), "metrics": metrics})
    return Message(content=content, metadata=_metadata(NODE_OF_PARTITION[partition], f"p{partition}", server_round))


def _error_reply(node: int, server_round: int = 1) -> Message:
    return Message(error=Error(code=0, reason="client crashed"), metadata=_metadata(node, f"err{node}", server_round))


def _independent_counts(weight: torch.Tensor, signal: torch.Tensor) -> dict[str, int]:
    """Aligned = <w_jr, j mu> > 0, recounted with plain torch in float64."""
    w = weight.double()
    mu = signal.double()
    pos = int(((w[0] @ mu) > 0).sum())  # j = +1
    neg = int(((-(w[1] @ mu)) > 0).sum())  # j = -1
    m = w.shape[1]
    return {
        "aligned": pos + neg,
        "misaligned": 2 * m - pos - neg,
        "aligned_pos": pos,
        "misaligned_pos": m - pos,
        "aligned_neg": neg,
        "misaligned_neg": m - neg,
    }


class _FakeGrid:
    """The only Grid method FedAvg.configure_train uses: get_node_ids()."""

    def __init__(self, node_ids: list[int]) -> None:
        self._node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self._node_ids)


@pytest.fixture
def task_identity():
    """Set TaskIdentity (instruction messages need run/node/task ids) and restore it after."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 77
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 5
    yield TaskIdentity
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def setup():
    init = _random_weight(1, scale=0.5)
    client_weights = {p: _random_weight(10 + p) for p in NODE_OF_PARTITION}
    return init, client_weights


def _strategy(init: torch.Tensor, sink=None, send_init_arrays: bool = False, node_of_partition=None, schedule=None):
    signal = _signal()
    return AlignmentTrackingFedAvg(
        alignment_fn=lambda state: alignment_report(init, state["weight"], signal),
        node_of_partition=node_of_partition or NODE_OF_PARTITION,
        schedule=schedule or [[0, 1, 2]] * 3,
        init_arrays=weight_to_arrays(init) if send_init_arrays else None,
        round_sink=sink,
    )


def _expected_average(client_weights: dict[int, torch.Tensor], partitions) -> np.ndarray:
    total = sum(NUM_EXAMPLES[p] for p in partitions)
    return sum(NUM_EXAMPLES[p] / total * client_weights[p].double().numpy() for p in partitions)


# ---------------------------------------------------------------------------------------------
# aggregate_train


def test_aggregate_train_is_the_example_weighted_average(setup):
    init, client_weights = setup
    strategy = _strategy(init)
    replies = [_reply(p, client_weights[p]) for p in (2, 0, 1)]
    arrays, _ = strategy.aggregate_train(1, replies)

    got = arrays_to_weight(arrays)
    assert got.shape == (2, FILTERS, DIM)
    assert got.dtype == torch.float32
    expected = _expected_average(client_weights, (0, 1, 2))
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-6)
    # not the unweighted mean (the sizes differ enough for this to matter)
    unweighted = np.mean([client_weights[p].double().numpy() for p in (0, 1, 2)], axis=0)
    assert np.abs(got.double().numpy() - unweighted).max() > 1e-2


def test_aggregate_train_metrics_report_alignment_clients_and_weighted_loss(setup):
    init, client_weights = setup
    signal = _signal()
    strategy = _strategy(init)
    arrays, metrics = strategy.aggregate_train(1, [_reply(p, client_weights[p]) for p in (1, 2, 0)])
    averaged = arrays_to_weight(arrays)

    # the full report, as the project's function computes it on the averaged weight
    report = alignment_report(init, averaged, signal)
    for key, value in report.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(metrics[key]), key
        else:
            assert metrics[key] == pytest.approx(value, abs=1e-9), key

    # the counts again, from an independent recount on the float64 average
    expected_avg = torch.from_numpy(_expected_average(client_weights, (0, 1, 2)))
    for key, value in _independent_counts(expected_avg, signal).items():
        assert int(metrics[key]) == value, key
    # the gammas independently: gamma_jr = j <w_jr - w_jr(0), mu>, averaged over init-aligned filters
    delta = (expected_avg - init.double()) @ signal.double()
    gamma = torch.stack([delta[0], -delta[1]])
    at_init = torch.stack([init.double()[0] @ signal.double() > 0, -(init.double()[1] @ signal.double()) > 0])
    assert metrics["gamma_aligned_init_mean"] == pytest.approx(float(gamma[at_init].mean()), abs=1e-5)
    assert metrics["gamma_misaligned_init_mean"] == pytest.approx(float(gamma[~at_init].mean()), abs=1e-5)
    # the init x now table covers every filter
    table = [
        "misaligned_init_aligned_now",
        "misaligned_init_misaligned_now",
        "aligned_init_aligned_now",
        "aligned_init_misaligned_now",
    ]
    assert sum(int(metrics[key]) for key in table) == 2 * FILTERS

    assert int(metrics["clients"]) == 3
    total = sum(NUM_EXAMPLES.values())
    expected_loss = sum(NUM_EXAMPLES[p] * TRAIN_LOSS[p] for p in NUM_EXAMPLES) / total
    assert metrics["train_loss"] == pytest.approx(expected_loss, abs=1e-12)
    assert "num-examples" not in metrics


def test_aggregate_train_does_not_depend_on_reply_order(setup):
    init, client_weights = setup
    replies = {p: _reply(p, client_weights[p]) for p in (0, 1, 2)}
    results = []
    for order in itertools.permutations((0, 1, 2)):
        arrays, metrics = _strategy(init).aggregate_train(1, [replies[p] for p in order])
        results.append((arrays_to_weight(arrays).numpy().copy(), dict(metrics)))
    reference_arrays, reference_metrics = results[0]
    for arrays, metrics in results[1:]:
        assert np.array_equal(arrays, reference_arrays)  # bit-identical
        assert repr(metrics) == repr(reference_metrics)  # (update_diversity is NaN: no configure_train)

    # the check has teeth: plain FedAvg's float32 sums do depend on the order on this data
    plain = []
    for order in itertools.permutations((0, 1, 2)):
        arrays, _ = FedAvg().aggregate_train(1, [replies[p] for p in order])
        plain.append(arrays["weight"].numpy().copy())
    assert any(not np.array_equal(plain[0], other) for other in plain[1:])


def test_aggregate_train_skips_error_replies(setup):
    init, client_weights = setup
    calls = []
    strategy = _strategy(
        init,
        sink=lambda r, m: calls.append((r, m)),
        node_of_partition={**NODE_OF_PARTITION, 3: 555},
        schedule=[[0, 1, 2, 3]],
    )
    replies = [_reply(0, client_weights[0]), _error_reply(555), _reply(2, client_weights[2]),
               _error_reply(123456)]  # 123456: a node the strategy does not know at all
    arrays, metrics = strategy.aggregate_train(1, replies)

    expected = _expected_average(client_weights, (0, 2))
    np.testing.assert_allclose(arrays_to_weight(arrays).double().numpy(), expected, rtol=0, atol=1e-6)
    assert int(metrics["clients"]) == 2
    expected_loss = (NUM_EXAMPLES[0] * TRAIN_LOSS[0] + NUM_EXAMPLES[2] * TRAIN_LOSS[2]) / (
        NUM_EXAMPLES[0] + NUM_EXAMPLES[2]
    )
    assert metrics["train_loss"] == pytest.approx(expected_loss, abs=1e-12)
    assert len(calls) == 1 and int(calls[0][1]["clients"]) == 2


def test_aggregate_train_with_only_errors_yields_nothing_and_no_sink_call(setup):
    init, _ = setup
    calls = []
    strategy = _strategy(init, sink=lambda r, m: calls.append((r, m)))
    arrays, _ = strategy.aggregate_train(2, [_error_reply(NODE_OF_PARTITION[0]), _error_reply(NODE_OF_PARTITION[1])])
    assert arrays is None
    assert calls == []


def test_round_sink_called_once_per_aggregation_with_round_and_metrics(setup):
    init, client_weights = setup
    calls = []
    strategy = _strategy(init, sink=lambda r, m: calls.append((r, m)))
    _, metrics = strategy.aggregate_train(3, [_reply(p, client_weights[p], 3) for p in (0, 1, 2)])
    assert len(calls) == 1
    server_round, sunk = calls[0]
    assert server_round == 3
    assert dict(sunk) == dict(metrics)
    assert int(sunk["clients"]) == 3 and "train_loss" in sunk and "misaligned" in sunk


# ---------------------------------------------------------------------------------------------
# configure_train


@pytest.mark.parametrize("send_init_arrays", [False, True])
def test_configure_train_targets_scheduled_partitions_only(task_identity, send_init_arrays):
    init = _random_weight(3, scale=0.1)
    node_of_partition = {0: 71, 1: 9, 2: 1003, 3: 44, 4: 250}
    schedule = [[0, 2], [1, 3, 4], [4]]
    strategy = _strategy(init, send_init_arrays=send_init_arrays, node_of_partition=node_of_partition,
                         schedule=schedule)
    grid = _FakeGrid(list(node_of_partition.values()))
    global_weight = _random_weight(4)
    for server_round, partitions in enumerate(schedule, start=1):
        messages = list(strategy.configure_train(server_round, weight_to_arrays(global_weight), ConfigRecord(
            {"fl.lr": 0.5}), grid))
        destinations = sorted(message.metadata.dst_node_id for message in messages)
        assert destinations == sorted(node_of_partition[p] for p in partitions)
        for message in messages:
            assert message.metadata.message_type == MessageType.TRAIN
            content = message.content
            assert torch.equal(arrays_to_weight(content["arrays"]), global_weight)
            assert content["config"]["server-round"] == server_round
            assert content["config"]["fl.lr"] == 0.5
            if send_init_arrays:
                assert INIT_ARRAYS_KEY in content
                assert torch.equal(arrays_to_weight(content[INIT_ARRAYS_KEY]), init)
            else:
                assert INIT_ARRAYS_KEY not in content


def test_alignment_metrics_of_the_initial_model(setup):
    init, _ = setup
    signal = _signal()
    metrics = _strategy(init).alignment_metrics(weight_to_arrays(init))
    counts = _independent_counts(init, signal)
    for key, value in counts.items():
        assert int(metrics[key]) == value, key
    assert 0 < counts["aligned"] < 2 * FILTERS  # the fixture has both kinds
    assert int(metrics["aligned_init_aligned_now"]) == counts["aligned"]
    assert int(metrics["misaligned_init_misaligned_now"]) == counts["misaligned"]
    assert int(metrics["misaligned_init_aligned_now"]) == 0
    assert int(metrics["aligned_init_misaligned_now"]) == 0
    assert metrics["gamma_aligned_init_mean"] == 0.0
    assert metrics["gamma_misaligned_init_mean"] == 0.0


# ---------------------------------------------------------------------------------------------
# client_schedule


def test_client_schedule_full_participation():
    assert client_schedule(10, 1.0, 4, seed=0) == [list(range(10))] * 4
    assert client_schedule(3, 1.0, 2, seed=99) == [[0, 1, 2], [0, 1, 2]]


def test_client_schedule_partial_participation():
    schedule = client_schedule(10, 0.3, 20, seed=0)
    assert len(schedule) == 20
    for clients in schedule:
        assert len(clients) == 3
        assert len(set(clients)) == 3
        assert clients == sorted(clients)
        assert all(isinstance(k, int) and 0 <= k < 10 for k in clients)
    assert len({tuple(clients) for clients in schedule}) > 1  # it is not the same subset every round
    assert client_schedule(10, 0.3, 20, seed=0) == schedule  # deterministic per seed
    assert client_schedule(10, 0.3, 20, seed=1) != schedule  # differs across seeds


def test_client_schedule_tiny_fraction_keeps_one_client():
    for clients in client_schedule(10, 0.01, 5, seed=3):
        assert len(clients) == 1


def test_update_diversity_is_the_mean_pairwise_cosine_of_client_updates(setup, task_identity):
    init, client_weights = setup
    global_weight = _random_weight(5)
    strategy = _strategy(init)
    grid = _FakeGrid(list(NODE_OF_PARTITION.values()))
    strategy.configure_train(1, weight_to_arrays(global_weight), ConfigRecord(), grid)
    replies = [_reply(p, client_weights[p]) for p in (2, 0, 1)] + [_error_reply(555)]
    _, metrics = strategy.aggregate_train(1, replies)
    updates = [(client_weights[p].double() - global_weight.double()).reshape(-1).numpy() for p in (0, 1, 2)]
    cosines = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in itertools.combinations(updates, 2)]
    assert metrics["update_diversity"] == pytest.approx(np.mean(cosines), abs=1e-6)
    # identical updates: diversity 1
    strategy.configure_train(2, weight_to_arrays(global_weight), ConfigRecord(), grid)
    same = [_reply(p, 2 * client_weights[0] - global_weight, server_round=2) for p in (0, 1, 2)]
    _, metrics = strategy.aggregate_train(2, same)
    assert metrics["update_diversity"] == pytest.approx(1.0, abs=1e-6)
