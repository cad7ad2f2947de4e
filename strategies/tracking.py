"""What this project adds to a Flower strategy, as one mixin that composes with any of them.

`tracked(FedAvgM)` is FedAvgM plus `ExperimentTracking`, which overrides only configure_train
and aggregate_train and calls super() (as Flower's own FedProx and FedAvgM extend FedAvg):
- a seeded client schedule: each round's clients are fixed partition-ids drawn up front, so runs
  that differ only in initialization (or strategy) sample the same clients in the same order;
- aggregation in partition-id order, so float sums (and results) do not depend on the order in
  which replies arrive;
- a report of the round's failed clients (the partitions without a reply, and why), and a clear
  error when none replied;
- the update diversity of the round's clients (mean pairwise cosine of w_k - w_global) and the
  number of replies, merged into the round's train metrics and handed to an optional sink;
- optionally w(0) in every train message (clients measure noise memorization);
- a round offset, so a resumed run continues at its true round number (the schedule, the
  clients' "server-round" and server optimizers' bias corrections see it), and the server
  optimizer's state (FedAvgM momentum, FedAdam/FedYogi/FedAdagrad moments) for checkpoints.
The global model's own metrics (test error, alignment) are the ServerApp's evaluate_fn's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from initmatters.protocol import ARRAYS_KEY, INIT_ARRAYS_KEY, arrays_to_state, error_reason, state_to_arrays
from initmatters_core.metrics import flat_update, update_diversity

RoundSink = Callable[[int, MetricRecord], None]

# Attributes in which Flower's strategies keep server optimizer state across rounds (FedAvgM's
# momentum, the FedOpt family's first and second moments). A strategy with other state adds its
# attribute names here; `current_arrays` needs no saving (configure_train sets it from the model).
SERVER_STATE_ATTRIBUTES = ("momentum_vector", "m_t", "v_t")


class _NodeSubsetGrid:
    """A view of a Grid whose get_node_ids() yields only the nodes chosen for this round."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterator[int]:
        return iter(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _sender(reply: Message) -> str:
    """Who sent an error reply: a node, or the SuperLink itself (e.g. for a node whose heartbeat expired)."""
    source = reply.metadata.src_node_id
    return "the SuperLink" if source == SUPERLINK_NODE_ID else f"node {source}"


class ExperimentTracking:
    """Mixin over a Flower strategy (see the module docstring); use `tracked(StrategyClass)`.

    Parameters
    ----------
    node_of_partition : partition-id -> node id of the connected SuperNodes.
    schedule : the partition-ids trained in each round (round r uses schedule[r - 1]).
    init_arrays : w(0), added to every train message when given.
    round_offset : rounds already done (a resumed run); round r of start() is round r + offset.
    round_sink : called with (true round, train metrics) after each aggregation.
    report : one-line messages for the user (failed clients).
    **strategy_kwargs : passed to the Flower strategy (e.g. proximal_mu, server_momentum).
    """

    def __init__(
        self,
        *,
        node_of_partition: Mapping[int, int],
        schedule: Sequence[Sequence[int]],
        init_arrays: ArrayRecord | None = None,
        round_offset: int = 0,
        round_sink: RoundSink | None = None,
        report: Callable[[str], None] = print,
        **strategy_kwargs: Any,
    ) -> None:
        largest_round = max((len(clients) for clients in schedule), default=1)
        strategy_kwargs.setdefault("fraction_evaluate", 0.0)
        super().__init__(fraction_train=1.0, min_train_nodes=largest_round, min_available_nodes=1,
                         **strategy_kwargs)
        self.node_of_partition = dict(node_of_partition)
        self.partition_of_node = {node: part for part, node in self.node_of_partition.items()}
        self.schedule = [list(clients) for clients in schedule]
        self.init_arrays = init_arrays
        self.round_offset = round_offset
        self.round_sink = round_sink
        self.report = report
        self.round_start_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send to this round's scheduled partitions only (the strategy samples all of the view)."""
        true_round = server_round + self.round_offset
        partitions = self.schedule[true_round - 1]
        self.min_train_nodes = len(partitions)
        self.round_start_arrays = arrays  # the global model the updates are measured from
        nodes = [self.node_of_partition[p] for p in partitions]
        messages = list(super().configure_train(true_round, arrays, config, _NodeSubsetGrid(grid, nodes)))
        if self.init_arrays is not None:
            for message in messages:
                message.content[INIT_ARRAYS_KEY] = self.init_arrays
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's aggregation over replies sorted by partition-id, plus reply metrics."""
        true_round = server_round + self.round_offset
        ordered = sorted(replies, key=lambda reply: self.partition_of_node.get(reply.metadata.src_node_id, -1))
        failed = [reply for reply in ordered if reply.has_error()]
        if failed:
            answered = {self.partition_of_node.get(reply.metadata.src_node_id) for reply in ordered
                        if not reply.has_error()}
            silent = [partition for partition in self.schedule[true_round - 1] if partition not in answered]
            reasons = "; ".join(f"{_sender(reply)}: {error_reason(reply)}" for reply in failed)
            self.report(f"round {true_round}: {len(ordered) - len(failed)} of {len(ordered)} scheduled clients "
                        f"replied, none from partition-id {silent} ({reasons})")
        arrays, metrics = super().aggregate_train(true_round, ordered)
        if arrays is None:
            raise RuntimeError(f"round {true_round}: none of the {len(ordered)} scheduled clients replied, "
                               f"nothing to aggregate; the checkpoint of round {true_round - 1} can be resumed")
        arrays = self.in_model_dtypes(arrays)
        merged = MetricRecord(dict(metrics or {}))
        merged["update_diversity"] = self.update_diversity(ordered)
        merged["clients"] = len(ordered) - len(failed)
        if self.round_sink is not None:
            self.round_sink(true_round, merged)
        return arrays, merged

    def in_model_dtypes(self, arrays: ArrayRecord) -> ArrayRecord:
        """`arrays` in the dtypes of the round's global model.

        Server optimizers can promote the model: FedAdam and FedYogi scale float32 moments by a
        NumPy float64 learning rate, which NumPy 2 computes in float64. The model keeps its own
        dtypes (what the clients and the task's model expect); unchanged arrays are returned as is.
        """
        start = self.round_start_arrays
        if start is None or all(arrays[key].dtype == start[key].dtype for key in arrays):
            return arrays
        reference = arrays_to_state(start)
        return state_to_arrays({key: value.to(reference[key].dtype) for key, value in arrays_to_state(arrays).items()})

    def update_diversity(self, replies: Sequence[Message]) -> float:
        """Mean pairwise cosine of the successful clients' updates w_k - w_global (NaN if < 2)."""
        if self.round_start_arrays is None:
            return float("nan")
        start = arrays_to_state(self.round_start_arrays)
        updates = [flat_update(arrays_to_state(reply.content[ARRAYS_KEY]), start)
                   for reply in replies if not reply.has_error()]
        return update_diversity(updates)

    def server_state(self) -> dict[str, Any]:
        """The server optimizer's state as tensors (for a checkpoint loaded with weights_only)."""
        state = {}
        for name in SERVER_STATE_ATTRIBUTES:
            value = getattr(self, name, None)
            if isinstance(value, Mapping):
                state[name] = {key: torch.from_numpy(np.asarray(array)) for key, array in value.items()}
            elif isinstance(value, list):
                state[name] = [torch.from_numpy(np.asarray(array)) for array in value]
        return state

    def load_server_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `server_state` returned (resume equals an uninterrupted run)."""
        for name, value in state.items():
            if name not in SERVER_STATE_ATTRIBUTES:
                raise ValueError(f"unknown server optimizer state {name!r} in the checkpoint")
            if isinstance(value, Mapping):
                setattr(self, name, {key: tensor.numpy() for key, tensor in value.items()})
            else:
                setattr(self, name, [tensor.numpy() for tensor in value])


def tracked(strategy_cls: type[Strategy]) -> type:
    """`strategy_cls` with ExperimentTracking mixed in (its configure_train / aggregate_train call super())."""
    return type(f"Tracked{strategy_cls.__name__}", (ExperimentTracking, strategy_cls), {})
