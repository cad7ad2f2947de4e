"""Which SuperNode holds which partition: asked once, before round 1, with one query message each."""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from initmatters.protocol import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, PARTITION_KEY, error_reason
from initmatters_core.settings import SettingError

SETTLE_S = 1.0  # SuperNodes may still be registering when more than enough are seen: count again after this


def too_many_nodes_message(num_nodes: int, num_clients: int) -> str:
    """One line for a federation with more SuperNodes than clients, with both ways out."""
    return (f"fl.num_clients={num_clients} is invalid here: the federation has {num_nodes} SuperNodes, one per "
            f"client is needed: run it with --federation-config \"num-supernodes={num_clients}\" (simulation), "
            f"or set fl.num_clients={num_nodes}")


def check_federation_size(grid: Grid, num_clients: int) -> None:
    """Fail at once (SettingError) when more SuperNodes than clients are connected.

    Called before anything is computed or written; too few may still be connecting, which
    discover_partitions waits for.
    """
    if len(grid.get_node_ids()) > num_clients:
        time.sleep(SETTLE_S)
        raise SettingError(too_many_nodes_message(len(grid.get_node_ids()), num_clients))


def discover_partitions(grid: Grid, num_clients: int, wait_s: float) -> dict[int, int]:
    """Map partition-id -> node id by asking every connected SuperNode (one query message each).

    wait_s (fl.wait_for_nodes_s) bounds both waits: for the SuperNodes to connect, and for their
    answers (on a loaded machine a simulated node's first answer can take a minute).
    """
    deadline = time.monotonic() + wait_s
    while len(node_ids := list(grid.get_node_ids())) < num_clients and time.monotonic() < deadline:
        time.sleep(0.2)
    if len(node_ids) > num_clients:
        check_federation_size(grid, num_clients)
    if len(node_ids) != num_clients:
        raise RuntimeError(
            f"fl.num_clients={num_clients} but {len(node_ids)} SuperNodes are connected after {wait_s:g}s: "
            f"run exactly {num_clients} (simulation: --federation-config 'num-supernodes={num_clients}'), "
            f"or wait longer with fl.wait_for_nodes_s"
        )
    queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
    node_of_partition: dict[int, int] = {}
    started = time.monotonic()
    for reply in grid.send_and_receive(queries, timeout=wait_s):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"SuperNode {node} rejected the run: {error_reason(reply)}")
        partition = reply.content[PARTITION_KEY]
        partition_id, num_partitions = int(partition[PARTITION_ID_KEY]), int(partition[NUM_PARTITIONS_KEY])
        if num_partitions != num_clients:
            raise RuntimeError(
                f"SuperNode {node} has num-partitions={num_partitions}, but fl.num_clients={num_clients}"
            )
        if partition_id in node_of_partition:
            raise RuntimeError(f"two SuperNodes hold partition-id={partition_id}: give each a distinct one")
        node_of_partition[partition_id] = node
    missing = sorted(set(range(num_clients)) - set(node_of_partition))
    if missing:
        waited = time.monotonic() - started
        raise RuntimeError(f"no SuperNode answered for partition-id(s) {missing}: the query timed out after "
                           f"{waited:.0f}s (fl.wait_for_nodes_s={wait_s:g} raises the limit)")
    return node_of_partition
