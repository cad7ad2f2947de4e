"""Checkpoints: after every round the global model, the rows so far and the server optimizer's state.

Written atomically to <output-dir>/checkpoint/checkpoint.pt (a crash leaves the previous one
intact) and loaded with weights_only; removed once summary.json is written. A run started on an
output-dir that holds one (and no summary.json) resumes from it: same settings and w(0)
required; rounds continue at the next round number (the client schedule, the clients' batch
streams and server optimizers are indexed by it), so the final model equals that of an
uninterrupted run.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from initmatters_core.results import RunFiles, cpu_state, save_tensor_atomic


def _plain(value: Any) -> Any:
    """A rounds.csv cell as a plain Python int/float/str/None (loadable with weights_only)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def save_checkpoint(files: RunFiles, server_round: int, state: Mapping[str, torch.Tensor],
                    init_state: Mapping[str, torch.Tensor], rows: list[dict[str, Any]],
                    resolved_config_yaml: str, server_state: Mapping[str, Any]) -> None:
    """Write the checkpoint of `server_round` atomically."""
    checkpoint = {
        "round": server_round,
        "state": cpu_state(state),
        "init_state": cpu_state(init_state),
        "rows": [{key: _plain(value) for key, value in row.items()} for row in rows],
        "config_yaml": resolved_config_yaml,
        "server_state": dict(server_state),
    }
    save_tensor_atomic(files.checkpoint, checkpoint)


def load_checkpoint(files: RunFiles, resolved_config_yaml: str,
                    init_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The checkpoint in `files`, checked against this run's settings and w(0)."""
    path: Path = files.checkpoint
    if not path.exists():
        raise RuntimeError(f"cannot resume: no checkpoint at {path}")
    state = torch.load(path, weights_only=True)
    if state["config_yaml"] != resolved_config_yaml:
        raise RuntimeError(f"cannot resume from {path}: it was made with other settings "
                           f"(see {files.config}): pass the same overrides or choose another output-dir")
    saved_init = state["init_state"]
    same = set(saved_init) == set(init_state) and all(
        torch.equal(saved_init[key], value.detach().cpu()) for key, value in init_state.items())
    if not same:
        raise RuntimeError(f"cannot resume from {path}: its initial model differs from this run's w(0)")
    return state
