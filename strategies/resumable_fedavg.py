"""AlignmentTrackingFedAvg that continues a checkpointed run at its true round number."""

from __future__ import annotations

import re
from collections.abc import Callable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from strategies.alignment_fedavg import AlignmentTrackingFedAvg


def _log_info(message: str) -> None:
    log(INFO, "[initmatters] %s", message)


def error_reason(message: Message) -> str:
    """A reply error's reason on one line, without Flower's "<class 'E'>:<'...'>" wrapping."""
    reason = " ".join(message.error.reason.split())
    match = re.fullmatch(r"<class '[\w.]+'>:<'(.*)'>", reason)
    return match.group(1) if match else reason



class ResumableFedAvg(AlignmentTrackingFedAvg):
    """AlignmentTrackingFedAvg whose rounds are numbered from `round_offset` + 1.

    Strategy.start counts rounds from 1; a resumed run adds the rounds already done, so the
    schedule, the clients' "server-round" and the round sink see the true round number. A round
    in which no scheduled client replies stops the run with a clear error (nothing to aggregate).
    """

    def __init__(self, *, round_offset: int = 0, report: Callable[[str], None] = _log_info, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_offset = round_offset
        self.report = report

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        return super().configure_train(server_round + self.round_offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        true_round = server_round + self.round_offset
        replies = list(replies)
        failed = [reply for reply in replies if reply.has_error()]
        if failed:
            reasons = "; ".join(f"node {reply.metadata.src_node_id}: {error_reason(reply)}" for reply in failed)
            self.report(f"round {true_round}: {len(replies) - len(failed)} of {len(replies)} scheduled clients "
                        f"replied ({reasons})")
        arrays, metrics = super().aggregate_train(true_round, replies)
        if arrays is None:
            raise RuntimeError(f"round {true_round}: none of the {len(replies)} scheduled clients replied, "
                               f"nothing to aggregate; the checkpoint of round {true_round - 1} can be resumed")
        return arrays, metrics
