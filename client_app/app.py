"""ClientApp: a thin adapter from Flower messages to `initmatters.federated.local_update`.

A client needs only the message (global model, the run's settings as a flat ConfigRecord and,
optionally, w(0)) and its node config (partition-id, num-partitions); it keeps no state in the
Context. Per process it memoizes its data (`initmatters.federated.cached_client_dataset`, a pure
function of the settings and the partition) and runs torch with one intra-op thread.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from initmatters.federated import local_update, unflatten_settings
from strategies.alignment_fedavg import INIT_ARRAYS_KEY, arrays_to_weight, weight_to_arrays

PARTITION_KEYS = ("partition-id", "num-partitions")

app = ClientApp()


def node_partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config, with a one-line error if unusable."""
    values = []
    for key in PARTITION_KEYS:
        value = context.node_config.get(key)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"node config {key}={value!r} is invalid: allowed an integer "
                             f"(start the SuperNode with --node-config 'partition-id=K num-partitions=N')")
        values.append(value)
    partition_id, num_partitions = values
    if num_partitions < 1:
        raise ValueError(f"node config num-partitions={num_partitions} is invalid: allowed an integer >= 1")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"node config partition-id={partition_id} is out of range: allowed 0..{num_partitions - 1}")
    return partition_id, num_partitions


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (lets it schedule and order clients)."""
    partition_id, num_partitions = node_partition(context)
    reply = ConfigRecord({"partition-id": partition_id, "num-partitions": num_partitions})
    return Message(RecordDict({"partition": reply}), reply_to=msg)


def single_threaded_torch() -> None:
    """One torch intra-op thread in this client process.

    The local model is tiny ([2, m, d] with n = 20 examples): more threads only add
    synchronisation, and with several simulated clients (Ray actors) per machine they
    oversubscribe the cores. It also makes a client's arithmetic independent of how many CPUs
    its backend gives it (Ray sets OMP_NUM_THREADS=num_cpus in actors).
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the local update on this node's partition and reply with the weight and metrics."""
    single_threaded_torch()
    partition_id, num_partitions = node_partition(context)
    config = msg.content["config"]
    settings = unflatten_settings(dict(config))
    init_record = msg.content.get(INIT_ARRAYS_KEY)
    update = local_update(
        settings,
        partition_id,
        num_partitions,
        global_weight=arrays_to_weight(msg.content["arrays"]),
        init_weight=arrays_to_weight(init_record) if init_record is not None else None,
        server_round=int(config["server-round"]),
    )
    metrics = MetricRecord({**update.metrics, "num-examples": update.num_examples})
    return Message(RecordDict({"arrays": weight_to_arrays(update.weight), "metrics": metrics}), reply_to=msg)
