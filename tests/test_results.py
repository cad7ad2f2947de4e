"""The results contract: atomic writes, rounds.csv, per-round progress and plots."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from initmatters_core import results
from initmatters_core.results import (
    RoundLog,
    RunFiles,
    default_output_dir,
    read_rounds_csv,
    rounds_csv_text,
    save_state,
    write_json_atomic,
    write_text_atomic,
)
from initmatters_core.tasks.synthetic.task import ROUND_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_text_atomic_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    write_text_atomic(target, "first\n")
    assert target.read_text() == "first\n"
    write_text_atomic(target, "second é\n")
    assert target.read_text(encoding="utf-8") == "second é\n"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "rounds.csv"
    target.write_text("old content\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new content that must not appear\n")
    assert target.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rounds.csv"]


def test_interrupted_write_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"a": 1})

    def broken_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "fsync", broken_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_write_json_atomic_handles_paths_and_tensors(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"path": tmp_path / "x", "mu": torch.tensor([1.5, 0.0]), "n": 3})
    assert json.loads(target.read_text()) == {"path": str(tmp_path / "x"), "mu": [1.5, 0.0], "n": 3}
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})


def _parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_rounds_csv_text_cells() -> None:
    third = 1.0 / 3.0
    text = rounds_csv_text(columns=ROUND_COLUMNS, rows=[
        {"round": 0, "train_loss": float("nan"), "test_loss": None, "test_error": third, "misaligned": 7},
        {"round": 1, "train_loss": 0.1 + 0.2, "test_error": 1e-20},
    ])
    table = _parse(text)
    assert table[0] == list(ROUND_COLUMNS)
    assert len(table) == 3
    first = dict(zip(table[0], table[1], strict=True))
    assert first["round"] == "0"
    assert first["train_loss"] == "" and first["test_loss"] == ""
    assert first["test_error"] == "0.3333333333333333" and float(first["test_error"]) == third
    assert first["misaligned"] == "7"
    assert all(first[c] == "" for c in ROUND_COLUMNS if c not in ("round", "test_error", "misaligned"))
    second = dict(zip(table[0], table[2], strict=True))
    assert second["train_loss"] == "0.30000000000000004"  # repr, not a rounded format
    assert float(second["test_error"]) == 1e-20


def test_rounds_csv_numpy_floats_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rounds.csv"
    row = {"round": 1, "test_error": np.float64(0.25), "train_loss": np.float32(0.5)}
    path.write_text(rounds_csv_text([row], ROUND_COLUMNS))
    (row,) = read_rounds_csv(path)
    assert row["test_error"] == 0.25 and row["train_loss"] == 0.5


def test_atomic_write_gives_umask_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "shared.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644


def test_rounds_csv_text_unknown_column_raises() -> None:
    with pytest.raises(KeyError, match="accuracy"):
        rounds_csv_text([{"round": 0, "accuracy": 0.5}], ROUND_COLUMNS)


def test_read_rounds_csv_inverts_text(tmp_path: Path) -> None:
    path = tmp_path / "rounds.csv"
    path.write_text(rounds_csv_text([{"round": 2, "test_error": 0.125, "rho_same_mean": float("nan")}], ROUND_COLUMNS))
    (row,) = read_rounds_csv(path)
    assert row["round"] == 2.0 and row["test_error"] == 0.125
    assert list(row) == list(ROUND_COLUMNS)
    assert math.isnan(row["rho_same_mean"]) and math.isnan(row["elapsed_s"])


class _Clock:
    def __init__(self, times: list[float]) -> None:
        self._times = iter(times)

    def __call__(self) -> float:
        return next(self._times)


def test_round_log_writes_csv_each_round_and_reports_progress(tmp_path: Path) -> None:
    path = tmp_path / "out" / "rounds.csv"
    messages: list[str] = []
    log = RoundLog(path, num_rounds=3, report=messages.append, columns=ROUND_COLUMNS,
                   clock=_Clock([10.0, 10.5, 12.0, 14.0]))

    log.add_eval(0, {"test_error": 0.5, "test_loss": 0.69, "misaligned": 20})
    assert "round 0/3" in messages[-1]
    assert len(read_rounds_csv(path)) == 1

    log.add_train(1, {"train_loss": 0.4, "rho_same_mean": 0.01, "not_a_column": 99})
    row = log.add_eval(1, {"test_error": 0.25, "test_loss": 0.6, "misaligned": 12})
    assert row["train_loss"] == 0.4 and row["test_error"] == 0.25 and "not_a_column" not in row
    rows = read_rounds_csv(path)
    assert [r["round"] for r in rows] == [0.0, 1.0]
    assert rows[1]["train_loss"] == 0.4 and rows[1]["rho_same_mean"] == 0.01
    assert rows[1]["test_error"] == 0.25 and rows[1]["misaligned"] == 12.0
    assert rows[1]["elapsed_s"] == 2.0
    assert math.isnan(rows[0]["train_loss"])  # no client trained at round 0
    progress = messages[-1]
    assert "round 1/3" in progress and "left" in progress
    assert "0.2500" in progress and "12" in progress
    assert "~4.0s left" in progress  # 2 s per round, 2 rounds to go

    log.add_eval(2, {"test_error": 0.2})
    assert "round 2/3" in messages[-1] and "~2.0s left" in messages[-1]
    assert len(read_rounds_csv(path)) == 3
    assert len(messages) == 3
    assert [p.name for p in path.parent.iterdir()] == ["rounds.csv"]


def test_plot_run_draws_the_measured_synthetic_metrics(tmp_path: Path) -> None:
    from initmatters_core.plots import PLOT_FILES, plot_run

    rows = []
    for r in range(4):
        rows.append({
            "round": r, "test_error": 0.5 - 0.1 * r, "misaligned": 8 - 2 * r,
            "misaligned_pos": 4 - r, "misaligned_neg": 4 - r,
            "gamma_aligned_init_mean": 0.3 * r,
            "gamma_misaligned_init_mean": float("nan") if r == 0 else 0.1 * r,
        })
    csv_path = tmp_path / "rounds.csv"
    csv_path.write_text(rounds_csv_text(rows, ROUND_COLUMNS))
    written = plot_run(csv_path, tmp_path / "plots", title="smoke")
    expected = ["misaligned.png", "test_error.png", "signal_learning.png"]
    assert [p.name for p in written] == expected and set(expected) <= set(PLOT_FILES)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(expected)
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_plot_run_draws_image_task_metrics_and_label_histograms(tmp_path: Path) -> None:
    from initmatters_core.plots import plot_run

    columns = ("round", "test_error", "conv1_pc_energy", "conv1_pc_energy_chance", "update_diversity")
    rows = [{"round": r, "test_error": 0.9 - 0.1 * r, "conv1_pc_energy": 0.2 + 0.1 * r,
             "conv1_pc_energy_chance": 0.125, "update_diversity": float("nan") if r == 0 else 0.5} for r in range(3)]
    csv_path = tmp_path / "rounds.csv"
    csv_path.write_text(rounds_csv_text(rows, columns))
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps({"histograms": [[5, 0, 1], [0, 4, 2]], "sizes": [6, 6]}))
    written = plot_run(csv_path, tmp_path / "plots", partition_json=partition)
    assert [p.name for p in written] == ["test_error.png", "first_layer.png", "update_diversity.png",
                                         "label_histograms.png"]
    assert all(path.read_bytes().startswith(PNG_MAGIC) for path in written)


def test_round_log_with_task_columns_rejects_other_metrics(tmp_path: Path) -> None:
    log = RoundLog(tmp_path / "rounds.csv", 2, lambda message: None, columns=("round", "test_error", "elapsed_s"))
    log.add_train(1, {"misaligned": 3})  # not a column of this task: dropped
    log.add_eval(0, {"test_error": 0.5})
    assert (tmp_path / "rounds.csv").read_text().splitlines()[0] == "round,test_error,elapsed_s"
    with pytest.raises(KeyError):
        rounds_csv_text([{"round": 0, "misaligned": 1}], ("round",))


def test_save_state_is_a_detached_state_dict(tmp_path: Path) -> None:
    weight = torch.arange(12.0).reshape(2, 3, 2).requires_grad_(True)
    save_state(tmp_path / "model.pt", {"weight": weight})
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert list(state) == ["weight"]
    assert torch.equal(state["weight"], torch.arange(12.0).reshape(2, 3, 2))
    assert not state["weight"].requires_grad


def test_run_files_name_the_results_contract(tmp_path: Path) -> None:
    files = RunFiles(tmp_path)
    assert [path.name for path in (files.config, files.rounds, files.summary, files.partition, files.model_init,
                                   files.model_final, files.plots, files.checkpoint)] == [
        "config.yaml", "rounds.csv", "summary.json", "partition.json", "model_init.pt", "model_final.pt", "plots",
        "checkpoint.pt"]
    assert files.checkpoint.parent == files.checkpoint_dir
    assert not files.finished() and not files.interrupted()
    files.checkpoint_dir.mkdir()
    files.checkpoint.write_bytes(b"x")
    assert files.interrupted()
    files.summary.write_text("{}")
    assert files.finished() and not files.interrupted()


def test_default_output_dir_is_a_new_dated_folder(tmp_path: Path) -> None:
    first, second = default_output_dir(tmp_path), default_output_dir(tmp_path)
    assert first.parent.parent == tmp_path / "outputs" and first != second


def test_progress_line_shows_the_task_metric(tmp_path: Path) -> None:
    messages: list[str] = []
    log = RoundLog(tmp_path / "rounds.csv", 2, messages.append, ("round", "test_error", "conv1_pc_energy", "elapsed_s"),
                   progress_metric="conv1_pc_energy")
    log.add_eval(0, {"test_error": 0.5, "conv1_pc_energy": 0.25})
    assert "conv1_pc_energy 0.2500" in messages[-1]

