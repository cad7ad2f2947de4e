"""The message protocol between the ServerApp and the ClientApp: the one place both apps import.

Wire keys (Flower's kebab-case), a model's state dict <-> ArrayRecord, the client's settings
<-> ConfigRecord, and a reply error's text. What travels in a train message:
- "arrays": the global model (ArrayRecord of its state dict);
- "config": the round's ConfigRecord: "server-round", the strategy's own keys (e.g. FedProx's
  "proximal-mu") and the client's settings flattened as {"section.key": value} (seed, data,
  heterogeneity, model and the local-training part of fl; server-only settings stay home);
- "init-arrays" (optional): w(0), for clients that measure noise memorization.
A reply carries "arrays" and "metrics" (with "num-examples"). A query message asks a node for
its "partition" (partition-id, num-partitions).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from initmatters_core.settings import ClientSettings, flatten_settings
from initmatters_core.tasks import client_settings_from_dict

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
CONFIG_KEY = "config"
INIT_ARRAYS_KEY = "init-arrays"
PARTITION_KEY = "partition"
SERVER_ROUND_KEY = "server-round"
NUM_EXAMPLES_KEY = "num-examples"
PROXIMAL_MU_KEY = "proximal-mu"  # set by Flower's FedProx in every train config
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
DATA_DIR_KEY = "data-dir"  # optional node config: this node's local copy of an image dataset

Scalar = bool | int | float | str


def state_to_arrays(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """The ArrayRecord of a model's state dict (CPU, contiguous, names in order)."""
    return ArrayRecord(torch_state_dict=OrderedDict(
        (key, value.detach().cpu().contiguous()) for key, value in state.items()))


def arrays_to_state(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The state dict held by an ArrayRecord (tensors share the record's memory)."""
    return dict(arrays.to_torch_state_dict())


def settings_to_config(settings: ClientSettings) -> dict[str, Scalar]:
    """The client's settings as the flat {"section.key": value} entries of a ConfigRecord (unset options left out)."""
    return flatten_settings(settings.to_dict(), keep_none=False)


def config_to_settings(config: ConfigRecord | Mapping[str, Any]) -> ClientSettings:
    """Inverse of settings_to_config; keys without a dot other than seed (e.g. server-round) are skipped."""
    nested: dict[str, Any] = {}
    for key, value in dict(config).items():
        section, dot, name = key.partition(".")
        if dot:
            nested.setdefault(section, {})[name] = value
        elif key == "seed":
            nested[key] = value
    return client_settings_from_dict(nested)


def error_reason(message: Message) -> str:
    """A reply error's reason on one line, without Flower's "<class 'E'>:<'...'>" wrapping."""
    reason = " ".join(message.error.reason.split())
    match = re.fullmatch(r"<class '[\w.]+'>:<'(.*)'>", reason)
    return match.group(1) if match else reason
