"""FedAvg that tracks filter alignment of the global model every round, reproducibly.

Over Flower's FedAvg it adds, by overriding only configure_train / aggregate_train:
- a seeded client schedule: each round's clients are fixed partition-ids drawn up front, so runs
  that differ only in initialization sample the same clients in the same order;
- aggregation in partition-id order, so float sums (and thus results) do not depend on the
  order in which replies arrive;
- the alignment report (aligned/misaligned counts, init x now table, signal learning gamma) of
  the aggregated model, merged into the round's train MetricRecord and handed to an optional
  per-round sink;
- optionally w(0) in every train message, so clients can measure noise memorization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from initmatters.alignment import alignment_report
from initmatters.model import WEIGHT_KEY

INIT_ARRAYS_KEY = "init-arrays"

RoundSink = Callable[[int, MetricRecord], None]


def weight_to_arrays(weight: torch.Tensor) -> ArrayRecord:
    """The ArrayRecord {"weight": [2, m, d] float32} that travels between server and clients."""
    return ArrayRecord(torch_state_dict={WEIGHT_KEY: weight.detach().to(torch.float32).contiguous()})


def arrays_to_weight(arrays: ArrayRecord) -> torch.Tensor:
    """The [2, m, d] weight tensor held by an ArrayRecord."""
    return torch.from_numpy(arrays[WEIGHT_KEY].numpy())


class _NodeSubsetGrid:
    """A view of a Grid whose get_node_ids() yields only the nodes chosen for this round."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterator[int]:
        return iter(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class AlignmentTrackingFedAvg(FedAvg):
    """FedAvg with a seeded client schedule, ordered aggregation and per-round alignment metrics.

    Parameters
    ----------
    signal : the signal vector mu, shape [d].
    init_weight : w(0), the global model before round 1, shape [2, m, d].
    node_of_partition : partition-id -> node id of the connected SuperNodes.
    schedule : the partition-ids trained in each round (round r uses schedule[r - 1]).
    send_init_arrays : add w(0) to every train message (clients report noise memorization).
    round_sink : called with (server_round, metrics) after each aggregation.
    **fedavg_kwargs : passed to FedAvg (e.g. fraction_evaluate, weighted_by_key).
    """

    def __init__(
        self,
        *,
        signal: torch.Tensor,
        init_weight: torch.Tensor,
        node_of_partition: Mapping[int, int],
        schedule: Sequence[Sequence[int]],
        send_init_arrays: bool = False,
        round_sink: RoundSink | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        largest_round = max((len(clients) for clients in schedule), default=1)
        fedavg_kwargs.setdefault("fraction_evaluate", 0.0)
        super().__init__(
            fraction_train=1.0,
            min_train_nodes=largest_round,
            min_available_nodes=1,
            **fedavg_kwargs,
        )
        self.signal = signal
        self.init_weight = init_weight
        self.node_of_partition = dict(node_of_partition)
        self.partition_of_node = {node: part for part, node in self.node_of_partition.items()}
        self.schedule = [list(clients) for clients in schedule]
        self.init_arrays = weight_to_arrays(init_weight) if send_init_arrays else None
        self.round_sink = round_sink

    def alignment_metrics(self, arrays: ArrayRecord) -> MetricRecord:
        """The alignment report of a global model relative to w(0)."""
        return MetricRecord(alignment_report(self.init_weight, arrays_to_weight(arrays), self.signal))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send to this round's scheduled partitions only (FedAvg samples all of the view)."""
        partitions = self.schedule[server_round - 1]
        self.min_train_nodes = len(partitions)
        nodes = [self.node_of_partition[p] for p in partitions]
        messages = list(super().configure_train(server_round, arrays, config, _NodeSubsetGrid(grid, nodes)))
        if self.init_arrays is not None:
            for message in messages:
                message.content[INIT_ARRAYS_KEY] = self.init_arrays
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg over replies sorted by partition-id, plus the alignment report."""
        ordered = sorted(replies, key=lambda reply: self.partition_of_node.get(reply.metadata.src_node_id, -1))
        arrays, metrics = super().aggregate_train(server_round, ordered)
        if arrays is None:
            return arrays, metrics
        merged = MetricRecord(dict(metrics or {}))
        merged.update(self.alignment_metrics(arrays))
        merged["clients"] = sum(1 for reply in ordered if not reply.has_error())
        if self.round_sink is not None:
            self.round_sink(server_round, merged)
        return arrays, merged

