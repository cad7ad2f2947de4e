"""ClientApp: a thin adapter from Flower messages to the task's `local_update`.

A client needs only the message (global model, the round's config with the client's settings,
optionally w(0)) and its node config (partition-id, num-partitions and, for image data kept at a
node-specific place, data-dir); it keeps no state in the Context. Per process it memoizes its
data (a pure function of the settings and the partition) and runs torch with one intra-op thread.
"""

from __future__ import annotations

import dataclasses

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from initmatters.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DATA_DIR_KEY,
    INIT_ARRAYS_KEY,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    PARTITION_KEY,
    PROXIMAL_MU_KEY,
    SERVER_ROUND_KEY,
    arrays_to_state,
    config_to_settings,
    state_to_arrays,
)
from initmatters_core.federation import check_partition_id
from initmatters_core.settings import ClientSettings
from initmatters_core.tasks import load_task

app = ClientApp()


def node_partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config, with a one-line error if unusable."""
    values = []
    for key in (PARTITION_ID_KEY, NUM_PARTITIONS_KEY):
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
    try:
        check_partition_id(partition_id, num_partitions)
    except ValueError as error:
        raise ValueError(f"node config {error}") from None
    return partition_id, num_partitions


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (lets it schedule and order clients)."""
    partition_id, num_partitions = node_partition(context)
    reply = ConfigRecord({PARTITION_ID_KEY: partition_id, NUM_PARTITIONS_KEY: num_partitions})
    return Message(RecordDict({PARTITION_KEY: reply}), reply_to=msg)


def single_threaded_torch() -> None:
    """One torch intra-op thread in this client process.

    The local model is tiny ([2, m, d] with n = 20 examples): more threads only add
    synchronisation, and with several simulated clients (Ray actors) per machine they
    oversubscribe the cores. It also makes a client's arithmetic independent of how many CPUs
    its backend gives it (Ray sets OMP_NUM_THREADS=num_cpus in actors).
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def with_node_data_dir(settings: ClientSettings, context: Context) -> ClientSettings:
    """The run's settings with data.data_dir replaced by this node's `data-dir`, when it has one.

    In a deployment every device may keep its copy of the dataset elsewhere; the partition a
    node trains is still fixed by partition-id (the rows are the same in every copy).
    """
    data_dir = context.node_config.get(DATA_DIR_KEY)
    if data_dir is None or not hasattr(settings.data, "data_dir"):
        return settings
    return dataclasses.replace(settings, data=dataclasses.replace(settings.data, data_dir=str(data_dir)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the local update on this node's partition and reply with the state dict and metrics."""
    single_threaded_torch()
    partition_id, num_partitions = node_partition(context)
    config = msg.content[CONFIG_KEY]
    settings = with_node_data_dir(config_to_settings(config), context)
    init_record = msg.content.get(INIT_ARRAYS_KEY)
    update = load_task(settings).local_update(
        settings,
        partition_id,
        num_partitions,
        global_state=arrays_to_state(msg.content[ARRAYS_KEY]),
        init_state=arrays_to_state(init_record) if init_record is not None else None,
        server_round=int(config[SERVER_ROUND_KEY]),
        proximal_mu=float(config.get(PROXIMAL_MU_KEY, 0.0)),
    )
    metrics = MetricRecord({**update.metrics, NUM_EXAMPLES_KEY: update.num_examples})
    return Message(RecordDict({ARRAYS_KEY: state_to_arrays(update.state), METRICS_KEY: metrics}), reply_to=msg)
