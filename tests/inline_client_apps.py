"""ClientApps for tests/test_inline_backend.py, importable by "module:attribute" in worker processes."""

from __future__ import annotations

import os
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

echo = ClientApp()


@echo.query()
def echo_query(msg: Message, context: Context) -> Message:
    """Reply with the node's partition-id, the worker's PID and a count kept in the node's Context."""
    seen = int(context.state.config_records.get("seen", ConfigRecord({"n": 0}))["n"]) + 1
    context.state.config_records["seen"] = ConfigRecord({"n": seen})
    sleep_s = float(msg.content["config"].get("sleep_s", 0.0)) if "config" in msg.content else 0.0
    time.sleep(sleep_s)
    reply = ConfigRecord({"partition-id": context.node_config["partition-id"], "pid": os.getpid(), "seen": seen})
    return Message(RecordDict({"reply": reply}), reply_to=msg)


@echo.train()
def failing_train(msg: Message, context: Context) -> Message:
    """Fail on odd partitions (a ClientApp that raises), echo on even ones."""
    if int(context.node_config["partition-id"]) % 2:
        raise ValueError("odd partitions fail\nacross two lines")
    return Message(RecordDict({"reply": ConfigRecord({"ok": 1})}), reply_to=msg)
