"""strategies/: ExperimentTracking over Flower strategies, the registry and the client schedule.

No simulation: replies are built directly from Metadata, instructions with a fake Grid. Every
expected value is computed independently here (numpy float64 averages, hand-written server
optimizer updates). The global model's own metrics (test error, alignment) are the ServerApp's
evaluate_fn's (tests/test_alignment.py, tests/test_equivalence.py), not the strategy's.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time

import numpy as np
import pytest
import torch
from flower_fakes import FakeGrid, task_identity  # noqa: F401 (task_identity: autouse fixture)
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from initmatters.compose import load_settings
from initmatters.launch import PROJECT_ROOT
from initmatters.protocol import INIT_ARRAYS_KEY, PROXIMAL_MU_KEY, arrays_to_state, state_to_arrays
from initmatters_core.federation import client_schedule
from initmatters_core.settings import SettingError, StrategySettings
from strategies import NOT_CONFIGURABLE, STRATEGIES, build_strategy, check_strategy, flower_strategy_class
from strategies.tracking import ExperimentTracking, tracked

DIM, FILTERS = 40, 6
# Node ids deliberately not monotone in the partition id: sorting by node id would give the
# partition order 1, 2, 0 (and the reply order is shuffled on top).
NODE_OF_PARTITION = {0: 9007, 1: 15, 2: 4242}
NUM_EXAMPLES = {0: 7, 1: 19, 2: 31}
TRAIN_LOSS = {0: 0.25, 1: 0.5, 2: 1.125}
FLOWER_CLASSES = (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad)


# ---------------------------------------------------------------------------------------------
# helpers


def _random_weight(seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(2, FILTERS, DIM, generator=gen)).to(torch.float32)


def _arrays(weight: torch.Tensor) -> ArrayRecord:
    return state_to_arrays({"weight": weight})


def _weight(arrays: ArrayRecord) -> torch.Tensor:
    return arrays_to_state(arrays)["weight"]


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
    content = RecordDict({"arrays": _arrays(weight), "metrics": metrics})
    return Message(content=content, metadata=_metadata(NODE_OF_PARTITION[partition], f"p{partition}", server_round))


def _error_reply(node: int, server_round: int = 1, reason: str = "client crashed") -> Message:
    return Message(error=Error(code=0, reason=reason), metadata=_metadata(node, f"err{node}", server_round))




@pytest.fixture
def client_weights():
    return {p: _random_weight(10 + p) for p in NODE_OF_PARTITION}


def _strategy(cls=FedAvg, *, sink=None, reports=None, init=None, node_of_partition=None, schedule=None,
              round_offset=0, **options):
    return tracked(cls)(
        node_of_partition=node_of_partition or NODE_OF_PARTITION,
        schedule=schedule or [[0, 1, 2]] * 3,
        init_arrays=_arrays(init) if init is not None else None,
        round_offset=round_offset,
        round_sink=sink,
        report=reports.append if reports is not None else (lambda message: None),
        **options,
    )


def _expected_average(client_weights, partitions) -> np.ndarray:
    total = sum(NUM_EXAMPLES[p] for p in partitions)
    return sum(NUM_EXAMPLES[p] / total * client_weights[p].double().numpy() for p in partitions)


def _round(strategy, server_round: int, global_weight: torch.Tensor, client_weights, order=(2, 0, 1)):
    """configure_train then aggregate_train with the clients' replies in `order`."""
    grid = FakeGrid(NODE_OF_PARTITION.values())
    messages = list(strategy.configure_train(server_round, _arrays(global_weight), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(NODE_OF_PARTITION.values())
    return strategy.aggregate_train(server_round, [_reply(p, client_weights[p], server_round) for p in order])


# ---------------------------------------------------------------------------------------------
# aggregate_train


def test_aggregate_train_is_the_example_weighted_average(client_weights):
    strategy = _strategy()
    arrays, _ = strategy.aggregate_train(1, [_reply(p, client_weights[p]) for p in (2, 0, 1)])

    got = _weight(arrays)
    assert got.shape == (2, FILTERS, DIM)
    assert got.dtype == torch.float32
    expected = _expected_average(client_weights, (0, 1, 2))
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=0, atol=1e-6)
    # not the unweighted mean (the sizes differ enough for this to matter)
    unweighted = np.mean([client_weights[p].double().numpy() for p in (0, 1, 2)], axis=0)
    assert np.abs(got.double().numpy() - unweighted).max() > 1e-2


def test_aggregate_train_metrics_report_clients_and_weighted_loss(client_weights):
    _, metrics = _strategy().aggregate_train(1, [_reply(p, client_weights[p]) for p in (1, 2, 0)])
    assert int(metrics["clients"]) == 3
    total = sum(NUM_EXAMPLES.values())
    expected_loss = sum(NUM_EXAMPLES[p] * TRAIN_LOSS[p] for p in NUM_EXAMPLES) / total
    assert metrics["train_loss"] == pytest.approx(expected_loss, abs=1e-12)
    assert "num-examples" not in metrics
    assert math.isnan(metrics["update_diversity"])  # no configure_train: no round-start model
    # the global model's alignment is the server's evaluate_fn's, not the strategy's
    assert "misaligned" not in metrics and "test_error" not in metrics


def test_aggregate_train_does_not_depend_on_reply_order(client_weights):
    replies = {p: _reply(p, client_weights[p]) for p in (0, 1, 2)}
    results = []
    for order in itertools.permutations((0, 1, 2)):
        arrays, metrics = _strategy().aggregate_train(1, [replies[p] for p in order])
        results.append((_weight(arrays).numpy().copy(), dict(metrics)))
    reference_arrays, reference_metrics = results[0]
    np.testing.assert_allclose(reference_arrays, _expected_average(client_weights, (0, 1, 2)), rtol=0, atol=1e-6)
    for arrays, metrics in results[1:]:
        assert np.array_equal(arrays, reference_arrays)  # bit-identical
        assert repr(metrics) == repr(reference_metrics)  # (update_diversity is NaN: no configure_train)

    # the check has teeth: plain FedAvg's float32 sums do depend on the order on this data
    plain = []
    for order in itertools.permutations((0, 1, 2)):
        arrays, _ = FedAvg().aggregate_train(1, [replies[p] for p in order])
        plain.append(arrays["weight"].numpy().copy())
    assert any(not np.array_equal(plain[0], other) for other in plain[1:])


def test_a_failed_reply_is_reported_and_left_out(client_weights):
    calls, reports = [], []
    strategy = _strategy(
        sink=lambda r, m: calls.append((r, m)),
        reports=reports,
        node_of_partition={**NODE_OF_PARTITION, 3: 555},
        schedule=[[0, 1, 2, 3]],
    )
    replies = [_reply(0, client_weights[0]), _error_reply(555), _reply(2, client_weights[2]),
               _error_reply(123456, reason="<class 'ValueError'>:<'node config   partition-id=9\n is bad'>")]
    # 123456: a node the strategy does not know at all
    arrays, metrics = strategy.aggregate_train(1, replies)

    expected = _expected_average(client_weights, (0, 2))
    np.testing.assert_allclose(_weight(arrays).double().numpy(), expected, rtol=0, atol=1e-6)
    assert int(metrics["clients"]) == 2
    expected_loss = (NUM_EXAMPLES[0] * TRAIN_LOSS[0] + NUM_EXAMPLES[2] * TRAIN_LOSS[2]) / (
        NUM_EXAMPLES[0] + NUM_EXAMPLES[2]
    )
    assert metrics["train_loss"] == pytest.approx(expected_loss, abs=1e-12)
    assert len(calls) == 1 and int(calls[0][1]["clients"]) == 2
    assert len(reports) == 1
    report = reports[0]
    assert "\n" not in report
    assert report.startswith("round 1: 2 of 4 scheduled clients replied, none from partition-id [1, 3] (")
    assert "node 555: client crashed" in report
    assert "node 123456: node config partition-id=9 is bad" in report  # Flower's wrapping dropped


def test_a_node_the_superlink_declared_unavailable_is_named_by_its_partition(client_weights):
    """Flower's SuperLink answers for a node whose heartbeat expired, with its own node id as the
    sender: the report names the partition that did not reply, not that id."""
    reports = []
    strategy = _strategy(reports=reports, schedule=[[0, 1, 2]])
    unavailable = _error_reply(SUPERLINK_NODE_ID, reason="Error: Node Unavailable - no heartbeat")
    strategy.aggregate_train(1, [_reply(0, client_weights[0]), unavailable, _reply(2, client_weights[2])])
    assert reports == ["round 1: 2 of 3 scheduled clients replied, none from partition-id [1] "
                       "(the SuperLink: Error: Node Unavailable - no heartbeat)"]


def test_no_report_when_every_client_replied(client_weights):
    reports = []
    _strategy(reports=reports).aggregate_train(1, [_reply(p, client_weights[p]) for p in (0, 1, 2)])
    assert reports == []


@pytest.mark.parametrize("cls", [FedAvg, FedAvgM, FedAdam])
def test_all_replies_failed_is_an_error_and_no_sink_call(cls):
    calls = []
    strategy = _strategy(cls, sink=lambda r, m: calls.append((r, m)), round_offset=1,
                         **({"server_momentum": 0.9} if cls is FedAvgM else {}))
    strategy.configure_train(1, _arrays(_random_weight(4)), ConfigRecord(), FakeGrid(NODE_OF_PARTITION.values()))
    with pytest.raises(RuntimeError, match=r"round 2: none of the 2 scheduled clients replied.*round 1 can be resumed"):
        strategy.aggregate_train(1, [_error_reply(NODE_OF_PARTITION[0]), _error_reply(NODE_OF_PARTITION[1])])
    assert calls == []


def test_round_sink_gets_the_true_round_and_the_metrics(client_weights):
    calls = []
    strategy = _strategy(sink=lambda r, m: calls.append((r, m)), round_offset=2)
    _, metrics = _round(strategy, 1, _random_weight(5), client_weights)
    assert len(calls) == 1
    server_round, sunk = calls[0]
    assert server_round == 3  # round 1 of a run resumed after round 2
    assert dict(sunk) == dict(metrics)
    assert int(sunk["clients"]) == 3 and "train_loss" in sunk and "update_diversity" in sunk


def test_update_diversity_is_the_mean_pairwise_cosine_of_client_updates(client_weights):
    global_weight = _random_weight(5)
    strategy = _strategy()
    grid = FakeGrid(NODE_OF_PARTITION.values())
    strategy.configure_train(1, _arrays(global_weight), ConfigRecord(), grid)
    replies = [_reply(p, client_weights[p]) for p in (2, 0, 1)] + [_error_reply(555)]
    _, metrics = strategy.aggregate_train(1, replies)
    updates = [(client_weights[p].double() - global_weight.double()).reshape(-1).numpy() for p in (0, 1, 2)]
    cosines = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in itertools.combinations(updates, 2)]
    assert metrics["update_diversity"] == pytest.approx(np.mean(cosines), abs=1e-6)
    assert int(metrics["clients"]) == 3
    # identical updates: diversity 1
    strategy.configure_train(2, _arrays(global_weight), ConfigRecord(), grid)
    same = [_reply(p, 2 * client_weights[0] - global_weight, server_round=2) for p in (0, 1, 2)]
    _, metrics = strategy.aggregate_train(2, same)
    assert metrics["update_diversity"] == pytest.approx(1.0, abs=1e-6)
    # one successful client: NaN
    strategy.configure_train(3, _arrays(global_weight), ConfigRecord(), grid)
    _, metrics = strategy.aggregate_train(3, [_reply(0, client_weights[0], 3), _error_reply(15, 3)])
    assert math.isnan(metrics["update_diversity"]) and int(metrics["clients"]) == 1


# ---------------------------------------------------------------------------------------------
# configure_train


@pytest.mark.parametrize("send_init_arrays", [False, True])
@pytest.mark.parametrize("round_offset", [0, 1])
def test_configure_train_targets_scheduled_partitions_only(send_init_arrays, round_offset):
    init = _random_weight(3, scale=0.1)
    node_of_partition = {0: 71, 1: 9, 2: 1003, 3: 44, 4: 250}
    schedule = [[0, 2], [1, 3, 4], [4], [0, 1, 2, 3, 4]]
    strategy = _strategy(init=init if send_init_arrays else None, node_of_partition=node_of_partition,
                         schedule=schedule, round_offset=round_offset)
    assert strategy.min_train_nodes == 5  # the largest round (FedAvg waits for that many nodes)
    grid = FakeGrid(node_of_partition.values())
    global_weight = _random_weight(4)
    for server_round in range(1, len(schedule) - round_offset + 1):
        true_round = server_round + round_offset
        partitions = schedule[true_round - 1]
        messages = list(strategy.configure_train(server_round, _arrays(global_weight),
                                                 ConfigRecord({"fl.lr": 0.5}), grid))
        assert strategy.min_train_nodes == len(partitions)
        destinations = sorted(message.metadata.dst_node_id for message in messages)
        assert destinations == sorted(node_of_partition[p] for p in partitions)
        for message in messages:
            assert message.metadata.message_type == MessageType.TRAIN
            content = message.content
            assert torch.equal(_weight(content["arrays"]), global_weight)
            assert content["config"]["server-round"] == true_round
            assert content["config"]["fl.lr"] == 0.5
            assert PROXIMAL_MU_KEY not in content["config"]
            if send_init_arrays:
                assert INIT_ARRAYS_KEY in content
                assert torch.equal(_weight(content[INIT_ARRAYS_KEY]), init)
            else:
                assert INIT_ARRAYS_KEY not in content


def test_fedprox_sends_its_proximal_mu():
    strategy = _strategy(FedProx, proximal_mu=0.25)
    messages = list(strategy.configure_train(1, _arrays(_random_weight(4)), ConfigRecord(),
                                             FakeGrid(NODE_OF_PARTITION.values())))
    assert len(messages) == 3
    for message in messages:
        assert message.content["config"][PROXIMAL_MU_KEY] == 0.25
        assert message.content["config"]["server-round"] == 1


# ---------------------------------------------------------------------------------------------
# tracked(X): the mixin over each Flower strategy


_OPTIONS = {
    FedAvg: {},
    FedProx: {"proximal_mu": 0.1},
    FedAvgM: {"server_momentum": 0.9, "server_learning_rate": 0.7},
    FedAdam: {"eta": 0.05},
    FedYogi: {"eta": 0.05},
    FedAdagrad: {"eta": 0.05},
}


@pytest.mark.parametrize("cls", FLOWER_CLASSES, ids=lambda cls: cls.__name__)
def test_tracked_composes_with_every_flower_strategy(cls, client_weights):
    strategy = _strategy(cls, **_OPTIONS[cls])
    assert isinstance(strategy, cls) and isinstance(strategy, ExperimentTracking)
    mro = type(strategy).__mro__
    # the mixin's overrides come first and reach the Flower class's through super()
    assert mro.index(ExperimentTracking) < mro.index(cls)
    assert type(strategy).__name__ == f"Tracked{cls.__name__}"
    assert strategy.fraction_evaluate == 0.0  # the server evaluates the global model itself
    for name, value in _OPTIONS[cls].items():
        assert getattr(strategy, name) == value

    global_weight = _random_weight(5)
    arrays, metrics = _round(strategy, 1, global_weight, client_weights)
    got = _weight(arrays).double().numpy()
    average = _expected_average(client_weights, (0, 1, 2))
    assert np.isfinite(got).all()
    assert int(metrics["clients"]) == 3 and not math.isnan(metrics["update_diversity"])
    if cls in (FedAvg, FedProx):
        np.testing.assert_allclose(got, average, rtol=0, atol=1e-6)
    else:  # a server optimizer step, not the plain average
        assert np.abs(got - average).max() > 1e-3


def test_fedavgm_is_the_hand_computed_momentum_update(client_weights):
    """Two rounds of w <- w - lr * v, v <- beta v + (w - avg), against FedAvg on the same replies."""
    lr, beta = 0.7, 0.9
    w0 = _random_weight(5)
    round_two = {p: client_weights[p] + _random_weight(20 + p, scale=0.3) for p in client_weights}
    fedavgm = _strategy(FedAvgM, server_learning_rate=lr, server_momentum=beta)
    fedavg = _strategy()

    arrays_m, _ = _round(fedavgm, 1, w0, client_weights)
    arrays_a, _ = _round(fedavg, 1, w0, client_weights)
    w1_m, w1_a = _weight(arrays_m), _weight(arrays_a)
    arrays_m, _ = _round(fedavgm, 2, w1_m, round_two, order=(1, 0, 2))
    arrays_a, _ = _round(fedavg, 2, w1_a, round_two, order=(1, 0, 2))

    avg1 = _expected_average(client_weights, (0, 1, 2))
    avg2 = _expected_average(round_two, (0, 1, 2))
    w = w0.double().numpy()
    v = w - avg1
    w1 = w - lr * v
    v = beta * v + (w1 - avg2)
    w2 = w1 - lr * v
    np.testing.assert_allclose(w1_m.double().numpy(), w1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_weight(arrays_m).double().numpy(), w2, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_weight(arrays_a).double().numpy(), avg2, rtol=0, atol=1e-6)
    assert np.abs(_weight(arrays_m).double().numpy() - avg2).max() > 1e-2  # momentum made a difference
    assert set(fedavgm.server_state()) == {"momentum_vector"}
    assert fedavg.server_state() == {}


@pytest.mark.parametrize("round_offset", [0, 4])
def test_fedadam_is_the_hand_computed_adam_step_at_the_true_round(client_weights, round_offset):
    """One FedAdam step; its bias correction uses the true round (Flower's t + 1 convention)."""
    eta, beta_1, beta_2, tau = 0.05, 0.9, 0.99, 1e-3
    w0 = _random_weight(5)
    strategy = _strategy(FedAdam, schedule=[[0, 1, 2]] * 5, round_offset=round_offset,
                         eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)
    arrays, _ = _round(strategy, 1, w0, client_weights)

    w = w0.double().numpy()
    delta = _expected_average(client_weights, (0, 1, 2)) - w
    m = (1 - beta_1) * delta
    v = (1 - beta_2) * delta**2
    t = 1 + round_offset
    eta_norm = eta * math.sqrt(1 - beta_2 ** (t + 1)) / (1 - beta_1 ** (t + 1))
    expected = w + eta_norm * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(_weight(arrays).double().numpy(), expected, rtol=0, atol=1e-5)
    assert set(strategy.server_state()) == {"m_t", "v_t"}


# ---------------------------------------------------------------------------------------------
# the registry: conf/strategy/ name -> Flower class


def test_registry_covers_conf_strategy_and_every_file_builds():
    assert {name: flower_strategy_class(name) for name in STRATEGIES} == {
        "fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM,
        "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    }
    assert sorted(path.stem for path in (PROJECT_ROOT / "conf" / "strategy").glob("*.yaml")) == sorted(STRATEGIES)
    for name in STRATEGIES:
        cls = flower_strategy_class(name)
        settings, _ = load_settings(f"debug=default strategy={name}")
        assert settings.strategy.name == name
        strategy = build_strategy(settings.strategy, node_of_partition=NODE_OF_PARTITION, schedule=[[0, 1, 2]])
        assert isinstance(strategy, cls) and isinstance(strategy, ExperimentTracking)
        for key, value in settings.strategy.options.items():
            assert getattr(strategy, key) == value, (name, key)


def test_declared_options_are_the_flower_classes_keyword_arguments():
    """The registry's option lists (checked without importing Flower) equal what each class takes,
    less what ExperimentTracking sets, callbacks (*_fn) and record keys (*_key)."""
    for name, entry in STRATEGIES.items():
        parameters = inspect.signature(flower_strategy_class(name).__init__).parameters
        takes = tuple(key for key in parameters if key not in ("self", *NOT_CONFIGURABLE)
                      and not key.endswith("_fn") and not key.endswith("_key"))
        assert entry.options == takes, name


def test_check_strategy_rejects_an_unknown_name():
    with pytest.raises(SettingError) as error:
        check_strategy(StrategySettings(name="fedsgd"))
    message = str(error.value)
    assert "\n" not in message
    assert message == "strategy='fedsgd' is invalid: allowed fedavg|fedprox|fedavgm|fedadam|fedyogi|fedadagrad"


def test_check_strategy_rejects_an_unknown_option_naming_the_allowed_ones():
    with pytest.raises(SettingError) as error:
        check_strategy(StrategySettings(name="fedavgm", options={"momentum": 0.9}))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("strategy.momentum is not an option of strategy=fedavgm: allowed ")
    allowed = message.split("allowed ", 1)[1].split("|")
    assert "strategy.server_momentum" in allowed and "strategy.server_learning_rate" in allowed
    # an option of another strategy is not one of this one's
    with pytest.raises(SettingError, match=r"strategy\.proximal_mu is not an option of strategy=fedavg"):
        check_strategy(StrategySettings(name="fedavg", options={"proximal_mu": 0.1}))
    check_strategy(StrategySettings(name="fedprox", options={"proximal_mu": 0.1}))  # accepted


@pytest.mark.parametrize("name, option", [("fedadam", "eta_l"), ("fedyogi", "eta_l"), ("fedavg", "fraction_evaluate"),
                                          ("fedprox", "fraction_train"), ("fedavgm", "min_train_nodes"),
                                          ("fedadam", "weighted_by_key"), ("fedavg", "train_metrics_aggr_fn")])
def test_check_strategy_rejects_options_the_project_sets_or_ignores(name, option):
    with pytest.raises(SettingError) as error:
        check_strategy(StrategySettings(name=name, options={option: 0.1}))
    message = str(error.value)
    assert message.startswith(f"strategy.{option} is not an option of strategy={name}: allowed ")
    assert f"strategy.{option}" not in message.split("allowed ", 1)[1].split("|")
    with pytest.raises(SettingError):
        build_strategy(StrategySettings(name=name, options={option: 0.1}), node_of_partition=NODE_OF_PARTITION,
                       schedule=[[0]])


def test_unknown_strategy_in_conf_is_a_one_line_error():
    with pytest.raises(SettingError) as error:
        load_settings("strategy=fedsgd")
    assert "\n" not in str(error.value) and "fedsgd" in str(error.value)


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
