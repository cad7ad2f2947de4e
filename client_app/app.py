"""ClientApp: a thin adapter from Flower messages to `initmatters.tasks.local_update`.

A client needs only the message (global model as a state dict, the run's settings as a flat
ConfigRecord and, optionally, w(0)) and its node config (partition-id, num-partitions and, for
image data kept at a node-specific place, data-dir); it keeps no state in the Context. Per
process it memoizes its data (a pure function of the settings and the partition) and runs torch
with one intra-op thread.
"""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from initmatters.federated import unflatten_settings
from initmatters.settings import ExperimentSettings
from initmatters.tasks import local_update
from strategies.alignment_fedavg import INIT_ARRAYS_KEY, arrays_to_state, state_to_arrays

PARTITION_KEYS = ("partition-id", "num-partitions")
DATA_DIR_KEY = "data-dir"  # optional node config: this node's local copy of an image dataset

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


def with_node_data_dir(settings: ExperimentSettings, context: Context) -> ExperimentSettings:
    """The run's settings with data.data_dir replaced by this node's `data-dir`, when it has one.

    In a deployment every device may keep its copy of the dataset elsewhere; the partition a
    node trains is still fixed by partition-id (the rows are the same in every copy).
    """
    data_dir = context.node_config.get(DATA_DIR_KEY)
    if data_dir is None or not settings.image_task:
        return settings
    return dataclasses.replace(settings, data=dataclasses.replace(settings.data, data_dir=str(data_dir)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the local update on this node's partition and reply with the state dict and metrics."""
    single_threaded_torch()
    partition_id, num_partitions = node_partition(context)
    config = msg.content["config"]
    settings = with_node_data_dir(unflatten_settings(dict(config)), context)
    init_record = msg.content.get(INIT_ARRAYS_KEY)
    update = local_update(
        settings,
        partition_id,
        num_partitions,
        global_state=arrays_to_state(msg.content["arrays"]),
        init_state=arrays_to_state(init_record) if init_record is not None else None,
        server_round=int(config["server-round"]),
    )
    metrics = MetricRecord({**update.metrics, "num-examples": update.num_examples})
    return Message(RecordDict({"arrays": state_to_arrays(update.state), "metrics": metrics}), reply_to=msg)
