"""Stand-ins for driving a Flower strategy without a simulation (hand-built replies, no Grid)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from flwr.supercore.task_identity import TaskIdentity


class FakeGrid:
    """The only Grid method a strategy's configure_train uses: get_node_ids()."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[type[TaskIdentity]]:
    """Instruction messages need run/node/task ids: set them, and restore them after the test."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 77, 1, 5
    yield TaskIdentity
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
