"""log.checkpoint_every: checkpoints every k rounds, always one when a run stops early, and a
resumed run still equals the uninterrupted one bit for bit; rounds.csv is appended, then rewritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flower_fakes import task_identity  # noqa: F401 (autouse: instruction messages need run/node ids)

from initmatters.compose import load_settings
from initmatters.inline import InlineGrid, client_runner, run_inline
from initmatters_core.results import RunFiles, read_rounds_csv, rounds_csv_text
from initmatters_core.settings import SettingError
from server_app.experiment import run_federated

OVERRIDES = "debug=default fl.num_rounds=7 log.checkpoint_every=3 log.plots=false"


class StopAt(Exception):
    """Raised by the report callback to stop a run at a chosen round (as a signal would)."""


def _checkpointed_round(files: RunFiles) -> int | None:
    return int(torch.load(files.checkpoint, weights_only=True)["round"]) if files.checkpoint.exists() else None


def test_checkpoints_every_k_rounds_and_when_the_run_stops(tmp_path: Path) -> None:
    settings, yaml = load_settings(OVERRIDES)
    files = RunFiles(tmp_path / "stopped")
    seen: dict[int, int | None] = {}

    def report(message: str) -> None:
        if message.startswith("round "):
            done = int(message.split()[1].split("/")[0])
            seen[done] = _checkpointed_round(files)  # before this round's own checkpoint
            if done == 5:
                raise StopAt(message)

    with client_runner(0) as runner, pytest.raises(StopAt):
        run_federated(InlineGrid(runner, settings.fl.num_clients), settings, yaml, files.root, report=report)
    assert seen == {0: None, 1: 0, 2: 0, 3: 0, 4: 3, 5: 3}  # written after rounds 0 and 3 only
    assert _checkpointed_round(files) == 4  # the stop kept the last completed round
    assert files.interrupted() and not files.lock.exists()

    run_inline(settings, yaml, files.root, workers=0)  # resumes after round 4
    run_inline(settings, yaml, tmp_path / "uninterrupted", workers=0)
    resumed, whole = read_rounds_csv(files.rounds), read_rounds_csv(tmp_path / "uninterrupted" / "rounds.csv")
    assert [row["round"] for row in resumed] == list(range(8))
    assert _same_nan([{k: v for k, v in row.items() if k != "elapsed_s"} for row in resumed], whole)
    final = torch.load(files.model_final, weights_only=True)["weight"]
    assert torch.equal(final, torch.load(tmp_path / "uninterrupted" / "model_final.pt", weights_only=True)["weight"])
    assert not files.checkpoint_dir.exists()


def _same_nan(rows: list[dict[str, float]], whole: list[dict[str, float]]) -> bool:
    """Row-wise equality where NaN equals NaN (blank cells read back as NaN)."""
    for row, other in zip(rows, whole, strict=True):
        for key, value in row.items():
            if not (value == other[key] or (value != value and other[key] != other[key])):
                return False
    return True


def test_rounds_csv_is_appended_then_rewritten_whole(tmp_path: Path) -> None:
    settings, yaml = load_settings(OVERRIDES)
    files = RunFiles(tmp_path / "run")
    inodes: list[int] = []

    def report(message: str) -> None:
        if message.startswith("round "):
            inodes.append(files.rounds.stat().st_ino)

    with client_runner(0) as runner:
        summary = run_federated(InlineGrid(runner, settings.fl.num_clients), settings, yaml, files.root, report=report)
    assert len(set(inodes)) == 1  # one file, appended to (an atomic rewrite makes a new inode)
    assert files.rounds.stat().st_ino != inodes[0]  # the final rewrite
    rows = read_rounds_csv(files.rounds)
    assert len(rows) == 8 and summary["rounds_completed"] == 7
    text = files.rounds.read_text()
    assert text.count("round,") == 1 and text.endswith("\n")


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_checkpoint_interval_is_refused(value: object) -> None:
    with pytest.raises(SettingError, match=rf"^log.checkpoint_every={value!r} is invalid: allowed a positive integer$"):
        load_settings(f"log.checkpoint_every={value}")


def test_csv_text_of_one_row_has_header_then_line() -> None:
    text = rounds_csv_text([{"round": 1, "test_error": 0.25}], ("round", "test_error"))
    assert text == "round,test_error\n1,0.25\n"


def test_a_fresh_run_over_a_finished_one_is_not_finished_until_it_is(tmp_path: Path) -> None:
    """A sweep job re-run with other settings in its folder: the old summary.json (the finished
    marker) goes at the start, so an interruption never leaves old results looking finished."""
    files = RunFiles(tmp_path / "job")
    old, old_yaml = load_settings(OVERRIDES)
    run_inline(old, old_yaml, files.root, workers=0)
    assert files.finished()
    new, new_yaml = load_settings(OVERRIDES + " seed=1")
    finished_during: list[bool] = []

    def report(message: str) -> None:
        if message.startswith("round 1/"):
            finished_during.append(files.finished())

    with client_runner(0) as runner:
        run_federated(InlineGrid(runner, new.fl.num_clients), new, new_yaml, files.root, report=report)
    assert finished_during == [False]
    assert files.holds_finished_run(new_yaml) and not files.holds_finished_run(old_yaml)
