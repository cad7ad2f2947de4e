"""A resumed run equals an uninterrupted one, server optimizer state included.

Fast: a strategy driven through N rounds with hand-built replies (seeded, the same in every
run), once uninterrupted and once stopped after k rounds: its global model and `server_state()`
go through torch.save / torch.load(weights_only=True) as in a checkpoint, a NEW strategy with
round_offset=k loads them and continues; the final arrays must be bit-identical.

Slow: the same through the real server code (run_federated in a Flower simulation): one
uninterrupted run, and one whose clients all fail in round 2 (the strategy then stops the run
with its "none replied" error, after round 1 was checkpointed), resumed with
build_server_app(..., resume=True) on the same output dir; model_final.pt and rounds.csv (but
elapsed_s) must equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_fakes import FakeGrid, task_identity  # noqa: F401 (task_identity: autouse fixture)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from client_app.app import app as client_app
from client_app.app import query as client_query
from client_app.app import train as client_train
from initmatters.compose import load_settings
from initmatters.protocol import CONFIG_KEY, SERVER_ROUND_KEY, arrays_to_state, state_to_arrays
from initmatters_core.results import RunFiles
from server_app.app import build_server_app
from strategies import build_strategy

NODE_OF_PARTITION = {0: 9007, 1: 15, 2: 4242}
NUM_EXAMPLES = {0: 7, 1: 19, 2: 31}
SCHEDULE = [[0, 1, 2], [0, 2], [1, 2], [0, 1, 2], [2], [0, 1]]  # partial participation in some rounds
NUM_ROUNDS = len(SCHEDULE)
SHAPES = {"weight": (2, 6, 40), "bias": (3,)}
# the strategies with server optimizer state (FedAvgM's momentum, the FedOpt family's moments)
STATEFUL = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


# ---------------------------------------------------------------------------------------------
# fast: the strategy alone, hand-built replies




def _initial_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=gen) for key, shape in SHAPES.items()}


def _client_state(global_state, true_round: int, partition: int) -> dict[str, torch.Tensor]:
    """A client's reply: the global model plus a step seeded by (round, partition) and pulled
    towards a partition-specific target, so it depends on the global model it was sent."""
    gen = torch.Generator().manual_seed(1000 * true_round + partition)
    target_gen = torch.Generator().manual_seed(partition)
    state = {}
    for key, value in global_state.items():
        value = value.to(torch.float32)
        target = torch.randn(value.shape, generator=target_gen)
        state[key] = value + 0.3 * (target - value) + 0.05 * torch.randn(value.shape, generator=gen)
    return state


def _reply(node: int, state, num_examples: int, true_round: int) -> Message:
    metadata = Metadata(run_id=77, message_id=f"r{true_round}-n{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id=f"i{true_round}-n{node}", group_id=str(true_round),
                        created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": state_to_arrays(state),
                          "metrics": MetricRecord({"train_loss": 0.5, "num-examples": num_examples})})
    return Message(content=content, metadata=metadata)


@functools.cache
def _strategy_settings(name: str):
    return load_settings(f"strategy={name}")[0].strategy  # the options of conf/strategy/<name>.yaml


def _new_strategy(name: str, round_offset: int):
    return build_strategy(_strategy_settings(name), node_of_partition=NODE_OF_PARTITION, schedule=SCHEDULE,
                          round_offset=round_offset, report=lambda message: None)


def _drive(strategy, arrays: ArrayRecord, num_rounds: int) -> ArrayRecord:
    """What Strategy.start does for the training part of `num_rounds` rounds (replies in reverse
    partition order; the strategy sorts them)."""
    grid = FakeGrid(NODE_OF_PARTITION.values())
    partition_of_node = {node: part for part, node in NODE_OF_PARTITION.items()}
    for server_round in range(1, num_rounds + 1):
        true_round = server_round + strategy.round_offset
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        assert {m.content[CONFIG_KEY][SERVER_ROUND_KEY] for m in messages} == {true_round}
        global_state = arrays_to_state(arrays)
        replies = []
        for message in sorted(messages, key=lambda m: -partition_of_node[m.metadata.dst_node_id]):
            partition = partition_of_node[message.metadata.dst_node_id]
            replies.append(_reply(message.metadata.dst_node_id, _client_state(global_state, true_round, partition),
                                  NUM_EXAMPLES[partition], true_round))
        arrays, _ = strategy.aggregate_train(server_round, replies)
    return arrays


def _checkpoint_round_trip(arrays: ArrayRecord, server_state):
    """The global model and server state through torch.save / torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save({"state": {k: v.clone() for k, v in arrays_to_state(arrays).items()}, "server_state": server_state},
               buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    return state_to_arrays(saved["state"]), saved["server_state"]


def _as_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy().copy() for key, array in arrays.items()}


def _bit_identical(a: ArrayRecord, b: ArrayRecord) -> bool:
    a, b = _as_numpy(a), _as_numpy(b)
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stop_after", [1, 3])
@pytest.mark.parametrize("name", STATEFUL)
def test_server_optimizer_state_survives_a_checkpoint_exactly(name, stop_after):
    initial = state_to_arrays(_initial_state())
    uninterrupted = _drive(_new_strategy(name, 0), initial, NUM_ROUNDS)

    first = _new_strategy(name, 0)
    at_stop = _drive(first, initial, stop_after)
    server_state = first.server_state()
    assert server_state, f"{name} has server optimizer state to save"
    restored_arrays, restored_state = _checkpoint_round_trip(at_stop, server_state)
    resumed = _new_strategy(name, stop_after)
    resumed.load_server_state(restored_state)
    final = _drive(resumed, restored_arrays, NUM_ROUNDS - stop_after)

    assert _bit_identical(final, uninterrupted)
    assert all(np.isfinite(v).all() for v in _as_numpy(final).values())

    # the check has teeth: without the saved state, or without the round offset (the schedule
    # and FedAdam/FedYogi's bias correction), the continuation differs
    forgetful = _drive(_new_strategy(name, stop_after), restored_arrays, NUM_ROUNDS - stop_after)
    assert not _bit_identical(forgetful, uninterrupted)


def test_server_state_round_trip_is_exact_and_checked():
    strategy = _new_strategy("fedadam", 0)
    _drive(strategy, state_to_arrays(_initial_state()), 2)
    state = strategy.server_state()
    assert set(state) == {"m_t", "v_t"} and set(state["m_t"]) == set(SHAPES)
    _, restored = _checkpoint_round_trip(state_to_arrays(_initial_state()), state)
    other = _new_strategy("fedadam", 2)
    other.load_server_state(restored)
    for name in ("m_t", "v_t"):
        for key, value in getattr(strategy, name).items():
            got = getattr(other, name)[key]
            assert got.dtype == value.dtype and np.array_equal(got, value), (name, key)
    momentum = _new_strategy("fedavgm", 0)
    _drive(momentum, state_to_arrays(_initial_state()), 1)
    assert set(momentum.server_state()) == {"momentum_vector"}
    assert _new_strategy("fedavg", 0).server_state() == {}
    with pytest.raises(ValueError, match="unknown server optimizer state 'velocity'"):
        other.load_server_state({"velocity": {}})


# ---------------------------------------------------------------------------------------------
# slow: through the real server code (run_federated in a Flower simulation)

E2E_OVERRIDES = "debug=default strategy={} fl.num_rounds=3"
FAIL_ROUND = 2

crashing_client_app = ClientApp()


@crashing_client_app.query()
def crashing_query(msg: Message, context: Context) -> Message:
    return client_query(msg, context)


@crashing_client_app.train()
def crashing_train(msg: Message, context: Context) -> Message:
    """The project's client, except that every client raises in round FAIL_ROUND."""
    if int(msg.content[CONFIG_KEY][SERVER_ROUND_KEY]) == FAIL_ROUND:
        raise RuntimeError(f"simulated crash in round {FAIL_ROUND}")
    return client_train(msg, context)


def _simulate(settings, yaml: str, out: Path, app: ClientApp, resume: bool = False) -> None:
    run_simulation(server_app=build_server_app(settings, yaml, out, resume=resume), client_app=app,
                   num_supernodes=settings.fl.num_clients, backend_config={"client_resources": {"num_cpus": 1}})


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(handle)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fedadam", "fedavgm"])
def test_resumed_run_equals_the_uninterrupted_run(name, tmp_path: Path):
    settings, yaml = load_settings(E2E_OVERRIDES.format(name))
    assert settings.strategy.name == name and settings.fl.num_rounds == 3
    reference, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    _simulate(settings, yaml, reference, client_app)
    assert (reference / "summary.json").is_file()

    # every client fails in round 2: the strategy ends the run after round 1's checkpoint
    with pytest.raises(RuntimeError, match=f"round {FAIL_ROUND}: none of the 2 scheduled clients replied"):
        _simulate(settings, yaml, interrupted, crashing_client_app)
    files = RunFiles(interrupted)
    assert not files.summary.exists() and files.interrupted()
    checkpoint = torch.load(files.checkpoint, weights_only=True)
    assert checkpoint["round"] == FAIL_ROUND - 1
    expected_state = {"fedadam": {"m_t", "v_t"}, "fedavgm": {"momentum_vector"}}[name]
    assert set(checkpoint["server_state"]) == expected_state  # the optimizer state is in the checkpoint
    assert [row["round"] for row in _rows(files.rounds)] == ["0", "1"]

    _simulate(settings, yaml, interrupted, client_app, resume=True)
    summary = json.loads(files.summary.read_text())
    assert summary["resumed_from_round"] == FAIL_ROUND - 1 and summary["rounds_completed"] == 3
    assert not files.checkpoint_dir.exists()
    final = torch.load(interrupted / "model_final.pt", weights_only=True)
    want = torch.load(reference / "model_final.pt", weights_only=True)
    assert final.keys() == want.keys()
    for key in want:
        assert final[key].dtype == want[key].dtype and torch.equal(final[key], want[key]), key
    assert _rows(interrupted / "rounds.csv") == _rows(reference / "rounds.csv")
    # the server optimizer moved the model away from plain FedAvg's: the state mattered
    initial = torch.load(reference / "model_init.pt", weights_only=True)
    assert any(not torch.equal(want[key], initial[key]) for key in want)
