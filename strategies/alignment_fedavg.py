"""FedAvg that tracks filter alignment of the global model every round, reproducibly.

Over Flower's FedAvg it adds, by overriding only configure_train / aggregate_train:
- a seeded client schedule: each round's clients are fixed partition-ids drawn up front, so runs
  that differ only in initialization sample the same clients in the same order;
- aggregation in partition-id order, so float sums (and thus results) do not depend on the
  order in which replies arrive;
- the task's alignment report of the aggregated model (synthetic: aligned/misaligned counts,
  init x now table, signal learning gamma; images: `initmatters.vision.alignment`) and the
  update diversity of the round's clients (mean pairwise cosine of w_k - w_global), merged into
  the round's train MetricRecord and handed to an optional per-round sink;
- optionally w(0) in every train message, so clients can measure noise memorization.
Models travel as state dicts; the synthetic model's is {"weight": [2, m, d]}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from initmatters.alignment import flat_update, update_diversity
from initmatters.model import WEIGHT_KEY

INIT_ARRAYS_KEY = "init-arrays"

RoundSink = Callable[[int, MetricRecord], None]
AlignmentFn = Callable[[Mapping[str, torch.Tensor]], Mapping[str, float]]


def state_to_arrays(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """The ArrayRecord of a model's state dict (CPU, contiguous, names in order)."""
    return ArrayRecord(torch_state_dict=OrderedDict(
        (key, value.detach().cpu().contiguous()) for key, value in state.items()))


def arrays_to_state(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The state dict held by an ArrayRecord (tensors share the record's memory)."""
    return dict(arrays.to_torch_state_dict())


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
    alignment_fn : state dict of a global model -> its alignment metrics (relative to w(0)).
    node_of_partition : partition-id -> node id of the connected SuperNodes.
    schedule : the partition-ids trained in each round (round r uses schedule[r - 1]).
    init_arrays : w(0), added to every train message when given (clients report noise memorization).
    round_sink : called with (server_round, metrics) after each aggregation.
    **fedavg_kwargs : passed to FedAvg (e.g. fraction_evaluate, weighted_by_key).
    """

    def __init__(
        self,
        *,
        alignment_fn: AlignmentFn,
        node_of_partition: Mapping[int, int],
        schedule: Sequence[Sequence[int]],
        init_arrays: ArrayRecord | None = None,
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
        self.alignment_fn = alignment_fn
        self.node_of_partition = dict(node_of_partition)
        self.partition_of_node = {node: part for part, node in self.node_of_partition.items()}
        self.schedule = [list(clients) for clients in schedule]
        self.init_arrays = init_arrays
        self.round_sink = round_sink
        self.round_start_arrays: ArrayRecord | None = None

    def alignment_metrics(self, arrays: ArrayRecord) -> MetricRecord:
        """The alignment report of a global model relative to w(0)."""
        return MetricRecord(dict(self.alignment_fn(arrays_to_state(arrays))))

    def update_diversity(self, replies: Sequence[Message]) -> float:
        """Mean pairwise cosine of the successful clients' updates w_k - w_global (NaN if < 2)."""
        if self.round_start_arrays is None:
            return float("nan")
        start = arrays_to_state(self.round_start_arrays)
        updates = [flat_update(arrays_to_state(reply.content["arrays"]), start)
                   for reply in replies if not reply.has_error()]
        return update_diversity(updates)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send to this round's scheduled partitions only (FedAvg samples all of the view)."""
        partitions = self.schedule[server_round - 1]
        self.min_train_nodes = len(partitions)
        self.round_start_arrays = arrays  # the global model the updates are measured from
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
        merged["update_diversity"] = self.update_diversity(ordered)
        merged["clients"] = sum(1 for reply in ordered if not reply.has_error())
        if self.round_sink is not None:
            self.round_sink(server_round, merged)
        return arrays, merged

