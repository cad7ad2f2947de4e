"""The sweep report on small fixture sweeps written here (no Flower, no training)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from matplotlib.colors import to_rgb

from initmatters import report
from initmatters_core.results import rounds_csv_text
from initmatters_core.tasks.synthetic.task import ROUND_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]

# Final test error per (init, h, seed) of the main fixture: 2 inits x 2 h x 2 seeds.
ERRORS = {
    ("random", 0.0, 0): 0.16, ("random", 0.0, 1): 0.18,
    ("random", 1.0, 0): 0.20, ("random", 1.0, 1): 0.26,
    ("pretrained", 0.0, 0): 0.10, ("pretrained", 0.0, 1): 0.12,
    ("pretrained", 1.0, 0): 0.11, ("pretrained", 1.0, 1): 0.12,
}
MISALIGNED_AT_INIT = {("random", 0): 22, ("random", 1): 18, ("pretrained", 0): 0, ("pretrained", 1): 0}


# --------------------------------------------------------------------------------------------
# Fixture generator: the results contract of a run, with chosen numbers


def nested_settings(init: str = "random", h: float | None = 0.0, seed: int = 0, scheme: str = "label_skew",
                    local_steps: int = 10, init_std: float = 0.1, steps: int = 50,
                    num_rounds: int = 3) -> dict[str, Any]:
    """summary.json["settings"] as the server writes it (ExperimentSettings.to_dict())."""
    init_section: dict[str, Any] = {"name": init, "lr": None, "misaligned_fraction": None, "path": None,
                                    "source_noise_std": None, "source_samples": None, "source_seed": None,
                                    "steps": None}
    if init == "pretrained":
        init_section.update(lr=0.5, source_noise_std=1.0, source_samples=200, source_seed=1000, steps=steps)
    return {
        "seed": seed,
        "data": {"dim": 1000, "label_noise": 0.0, "name": "synthetic", "noise_std": 1.0, "samples_per_client": 20,
                 "signal_norm": 1.5, "test_samples": 2000},
        "fl": {"batch_size": 0, "fraction_train": 1.0, "local_steps": local_steps, "lr": 0.5,
               "num_clients": 10, "num_rounds": num_rounds, "wait_for_nodes_s": 30.0},
        "heterogeneity": {"alpha": None, "classes_per_client": None, "min_partition_size": None,
                          "name": scheme, "h": h if scheme == "label_skew" else None},
        "init": init_section,
        "log": {"noise_memorization": True, "plots": True, "checkpoint_every": 10},
        "model": {"filters_per_class": 20, "init_std": init_std, "name": "two_layer_cnn"},
    }


def write_run(folder: Path, settings: Mapping[str, Any], *, test_error: float, misaligned_init: int,
              realised_h: float, test_loss: float | None = None, finished: bool = True,
              misaligned: Sequence[float] | None = None, pop_test_error: float | None = None,
              columns: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Write config.yaml, rounds.csv and (if finished) summary.json; misaligned falls linearly to 0
    (or follows `misaligned`, one value per round 0..num_rounds); pop_test_error (blank unless
    given) falls linearly from 0.5 to `pop_test_error`; further rounds.csv `columns` (one value per
    round) as given."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(settings)))
    num_rounds = settings["fl"]["num_rounds"]
    filters = 2 * settings["model"]["filters_per_class"]
    test_loss = test_error + 0.3 if test_loss is None else test_loss
    rows = []
    for r in range(num_rounds + 1):
        count = round(misaligned_init * (num_rounds - r) / num_rounds) if misaligned is None else misaligned[r]
        row = {column: float("nan") for column in ROUND_COLUMNS}
        row.update(round=r, misaligned=count, aligned=filters - count, elapsed_s=0.1 * r,
                   test_error=0.5 + (test_error - 0.5) * r / num_rounds,
                   test_loss=0.7 + (test_loss - 0.7) * r / num_rounds)
        if pop_test_error is not None:
            row.update(pop_test_error=0.5 + (pop_test_error - 0.5) * r / num_rounds)
        if r:
            row.update(train_loss=0.1, clients=10)
        row.update({column: values[r] for column, values in (columns or {}).items()})
        rows.append(row)
    (folder / "rounds.csv").write_text(rounds_csv_text(rows, ROUND_COLUMNS))
    if finished:
        final = {k: v for k, v in rows[-1].items() if not (isinstance(v, float) and math.isnan(v))}
        summary = {"final": final, "initial_misaligned": misaligned_init, "realised_h": realised_h,
                   "rounds_completed": num_rounds, "settings": dict(settings), "wall_time_s": 2.0,
                   "client_sizes": [20] * 10}
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Hydra-multirun-like layout: 8 finished jobs, one unfinished, .hydra folders everywhere."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    job = 0
    for (init, h, seed), error in ERRORS.items():
        folder = write_run(root / str(job), nested_settings(init, h, seed), test_error=error,
                           misaligned_init=MISALIGNED_AT_INIT[(init, seed)], realised_h=h)
        hydra = folder / ".hydra"
        hydra.mkdir()
        (hydra / "config.yaml").write_text("seed: 0\n")  # Hydra's own copy: not a run
        job += 1
    write_run(root / "8", nested_settings("random", 0.5, 0), test_error=0.3, misaligned_init=20,
              realised_h=0.5, finished=False)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return tmp_path / "multirun"


def read_summary_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def row_for(rows: Sequence[Mapping[str, str]], **match: str) -> Mapping[str, str]:
    found = [row for row in rows if all(row[k.replace("__", ".")] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


def sample_std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# --------------------------------------------------------------------------------------------
# Loading and grouping


def test_load_runs_finds_finished_runs_at_any_depth_and_lists_unfinished(sweep: Path) -> None:
    runs, unfinished = report.scan_sweep(sweep)
    assert len(runs) == 8
    assert [r.path for r in report.load_runs(sweep)] == [r.path for r in runs]  # rows hold NaN
    assert [u.path.name for u in unfinished] == ["8"]  # .hydra/config.yaml folders are not runs
    assert unfinished[0].reason == "no summary.json"
    assert unfinished[0].settings["heterogeneity.h"] == 0.5
    run = next(r for r in runs if r.settings["init.name"] == "random" and r.seed == 1
               and r.settings["heterogeneity.h"] == 1.0)
    assert run.test_error == pytest.approx(0.26)
    assert run.misaligned_init == 18 and run.misaligned_final == 0 and run.realised_h == 1.0
    assert len(run.rounds) == 4 and run.settings["fl.local_steps"] == 10


def test_group_runs_and_varying_keys_ignore_unset_init_settings(sweep: Path) -> None:
    groups = report.group_runs(report.load_runs(sweep))
    assert len(groups) == 4 and all(len(g.runs) == 2 for g in groups)
    assert all([r.seed for r in g.runs] == [0, 1] for g in groups)
    # init.steps etc. are None for random and set for pretrained: implied by init.name, not a column
    assert report.varying_keys(groups) == ["init.name", "heterogeneity.h"]


def test_flatten_settings_uses_hydra_key_names() -> None:
    flat = report.flatten_settings(nested_settings("pretrained", 0.5, 3))
    assert flat["seed"] == 3 and flat["heterogeneity.h"] == 0.5 and flat["init.steps"] == 50
    assert flat["fl.local_steps"] == 10 and "init" not in flat


def test_mean_std_is_sample_std_and_ignores_nan() -> None:
    assert report.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))
    mean, std = report.mean_std([4.0, float("nan")])
    assert mean == 4.0 and math.isnan(std)
    assert all(math.isnan(v) for v in report.mean_std([]))


# --------------------------------------------------------------------------------------------
# summary.csv / summary.md / figures


def test_summary_csv_numbers_match_hand_computed_values(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    rows = read_summary_csv(out / "summary.csv")
    assert list(rows[0])[:4] == ["init.name", "heterogeneity.h", "n_seeds", "seeds"]
    # sorted by the varying keys: init.name, then h
    assert [(r["init.name"], r["heterogeneity.h"]) for r in rows] == [
        ("pretrained", "0.0"), ("pretrained", "1.0"), ("random", "0.0"), ("random", "1.0")]
    for (init, h) in [("random", 0.0), ("random", 1.0), ("pretrained", 0.0), ("pretrained", 1.0)]:
        row = row_for(rows, init__name=init, heterogeneity__h=str(h))
        errors = [ERRORS[(init, h, seed)] for seed in (0, 1)]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        assert float(row["test_error_mean"]) == pytest.approx(sum(errors) / 2)
        assert float(row["test_error_std"]) == pytest.approx(sample_std(errors))
        assert float(row["test_loss_mean"]) == pytest.approx(sum(errors) / 2 + 0.3)
        misaligned = [MISALIGNED_AT_INIT[(init, seed)] for seed in (0, 1)]
        assert float(row["misaligned_init_mean"]) == pytest.approx(sum(misaligned) / 2)
        assert float(row["misaligned_init_std"]) == pytest.approx(sample_std(misaligned))
        assert float(row["misaligned_final_mean"]) == 0.0
        assert float(row["realised_h_mean"]) == h and float(row["realised_h_std"]) == 0.0
    # penalty per seed: random (0.20-0.16, 0.26-0.18) = (0.04, 0.08); pretrained (0.01, 0.00)
    random_h1 = row_for(rows, init__name="random", heterogeneity__h="1.0")
    assert float(random_h1["heterogeneity_penalty_mean"]) == pytest.approx(0.06)
    assert float(random_h1["heterogeneity_penalty_std"]) == pytest.approx(sample_std([0.04, 0.08]))
    assert random_h1["heterogeneity_penalty_n"] == "2"
    pretrained_h1 = row_for(rows, init__name="pretrained", heterogeneity__h="1.0")
    assert float(pretrained_h1["heterogeneity_penalty_mean"]) == pytest.approx(0.005)
    assert float(pretrained_h1["heterogeneity_penalty_std"]) == pytest.approx(math.sqrt(0.00005))
    assert float(row_for(rows, init__name="random", heterogeneity__h="0.0")["heterogeneity_penalty_mean"]) == 0.0


def test_summary_md_formats_cells_and_lists_unfinished_runs(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.main([str(sweep), "--out", str(out)])
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "| init.name | heterogeneity.h | n_seeds | final test error |" in text
    assert "8 finished runs" in text and "4 configurations" in text
    # random, h=1: error (0.20, 0.26), loss +0.3, misaligned (22, 18), penalty (0.04, 0.08)
    assert ("| random | 1 | 2 | 0.2300 ± 0.0424 | 0.5300 ± 0.0424 | 20.0 ± 2.8 | 0.0 ± 0.0 | "
            "1.0000 ± 0.0000 | +0.0600 ± 0.0283 |") in text
    assert "| pretrained | 1 | 2 | 0.1150 ± 0.0071 |" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[:2] for line in table] == [
        ["| pretrained", "0"], ["| pretrained", "1"], ["| random", "0"], ["| random", "1"]]
    unfinished = [line for line in text.splitlines() if line.startswith("Unfinished runs")]
    assert len(unfinished) == 1
    assert unfinished[0].startswith("Unfinished runs (1, not in the table): ")
    assert "2025-01-01/12-00-00/8" in unfinished[0] and "heterogeneity.h=0.5" in unfinished[0]
    assert "no summary.json" in unfinished[0]


def test_expected_figures_exist_and_no_temp_files_left(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report.main([str(sweep), "--out", str(out)])
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == ["init_variants.png", "misaligned_vs_round.png", "test_error_vs_h.png"]
    for name in names:
        assert (out / "figures" / name).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in out.iterdir()) == ["figures", "summary.csv", "summary.md"]
    assert "![test_error_vs_h](figures/test_error_vs_h.png)" in (out / "summary.md").read_text()


def test_default_out_is_the_sweep_folder_and_rerun_reads_only_runs(sweep: Path, capsys) -> None:
    assert report.main([str(sweep)]) == 0
    first = (sweep / "summary.csv").read_text()
    assert (sweep / "figures" / "test_error_vs_h.png").exists()
    assert "8 finished runs in 4 configurations, 1 unfinished" in capsys.readouterr().out
    assert report.main([str(sweep)]) == 0  # its own outputs are not mistaken for runs
    assert (sweep / "summary.csv").read_text() == first


def test_penalty_blank_without_h0_partner_and_for_other_schemes(tmp_path: Path) -> None:
    write_run(tmp_path / "a", nested_settings("random", 0.5, 0), test_error=0.2, misaligned_init=20, realised_h=0.5)
    write_run(tmp_path / "b", nested_settings("random", 1.0, 0), test_error=0.3, misaligned_init=20, realised_h=1.0)
    write_run(tmp_path / "c", nested_settings("random", None, 0, scheme="iid"), test_error=0.15,
              misaligned_init=20, realised_h=0.07)
    runs = report.load_runs(tmp_path)
    groups = report.group_runs(runs)
    keys = report.varying_keys(groups)
    assert keys == ["heterogeneity.name", "heterogeneity.h"]
    rows = report.summarize(groups, keys)
    assert [(r["heterogeneity.name"], r["heterogeneity.h"]) for r in rows] == [
        ("iid", None), ("label_skew", 0.5), ("label_skew", 1.0)]
    assert all(math.isnan(r["heterogeneity_penalty_mean"]) and r["heterogeneity_penalty_n"] == 0 for r in rows)
    assert rows[0]["realised_h_mean"] == pytest.approx(0.07)  # reported for non-label_skew schemes too
    csv_rows = list(csv.DictReader(report.render_csv(rows, keys).splitlines()))
    assert csv_rows[0]["heterogeneity.h"] == "" and csv_rows[0]["heterogeneity_penalty_mean"] == ""
    markdown = report.render_markdown(rows, keys)
    assert "| iid | — | 1 | 0.1500 | 0.4500 | 20.0 | 0.0 | 0.0700 |  |" in markdown
    assert "Unfinished runs: none." in markdown


def test_penalty_pairs_by_seed_and_tau_panels(tmp_path: Path) -> None:
    # seed 1 has no h=0 partner at tau=1; tau=50 has no h=0 runs at all
    cases = [(1, 0.0, 0, 0.10), (1, 1.0, 0, 0.15), (1, 1.0, 1, 0.40), (50, 1.0, 0, 0.3), (50, 0.5, 0, 0.2)]
    for tau, h, seed, error in cases:
        write_run(tmp_path / f"t{tau}-h{h}-s{seed}", nested_settings("random", h, seed, local_steps=tau),
                  test_error=error, misaligned_init=20, realised_h=h)
    groups = report.group_runs(report.load_runs(tmp_path))
    rows = report.summarize(groups)
    by = {(r["fl.local_steps"], r["heterogeneity.h"]): r for r in rows}
    assert report.varying_keys(groups) == ["heterogeneity.h", "fl.local_steps"]
    assert list(by) == [(1, 0.0), (50, 0.5), (1, 1.0), (50, 1.0)]  # sorted by h, then tau
    assert by[(1, 1.0)]["heterogeneity_penalty_mean"] == pytest.approx(0.05)
    assert by[(1, 1.0)]["heterogeneity_penalty_n"] == 1 and by[(1, 1.0)]["n_seeds"] == 2
    assert math.isnan(by[(50, 1.0)]["heterogeneity_penalty_mean"])
    figures = report.make_figures(groups, report.varying_keys(groups), tmp_path / "fig")
    assert [p.name for p in figures] == ["test_error_vs_h.png", "misaligned_vs_round.png"]


def test_pretraining_and_init_variant_figures(tmp_path: Path) -> None:
    for steps in (0, 10, 50):
        for seed in (0, 1):
            write_run(tmp_path / f"pre{steps}-s{seed}", nested_settings("pretrained", 0.0, seed, steps=steps),
                      test_error=0.2 - steps / 1000 + seed / 100, misaligned_init=20 - steps // 5, realised_h=0.0)
    for init_std in (0.05, 0.1):
        write_run(tmp_path / f"rand{init_std}", nested_settings("random", 0.0, 0, init_std=init_std),
                  test_error=0.2, misaligned_init=20, realised_h=0.0)
    out = tmp_path / "out"
    assert report.main([str(tmp_path), "--out", str(out)]) == 0
    keys = report.varying_keys(report.group_runs(report.load_runs(tmp_path)))
    assert keys == ["init.name", "init.steps", "model.init_std"]
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == ["init_variants.png", "misaligned_vs_round.png", "pretraining_steps.png"]
    rows = read_summary_csv(out / "summary.csv")
    pre50 = row_for(rows, init__name="pretrained", init__steps="50")
    assert float(pre50["misaligned_init_mean"]) == 10.0
    assert float(pre50["test_error_mean"]) == pytest.approx(0.155)


def test_single_configuration_has_no_comparison_figures(tmp_path: Path) -> None:
    for seed in (0, 1, 2):
        write_run(tmp_path / f"s{seed}", nested_settings("random", 0.0, seed), test_error=0.1 * (seed + 1),
                  misaligned_init=20, realised_h=0.0)
    result = report.write_report(tmp_path)
    assert result["configurations"] == 1 and result["keys"] == ["init.name"]
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").iterdir())
    assert "| random | 3 | 0.2000 ± 0.1000 |" in (tmp_path / "summary.md").read_text()


def test_trackers_do_not_split_a_configuration(tmp_path: Path) -> None:
    """Seed 1 ran with TensorBoard and W&B on, seed 0 before the tracker settings existed."""
    write_run(tmp_path / "s0", nested_settings("random", 0.0, 0), test_error=0.1, misaligned_init=20, realised_h=0.0)
    traced = nested_settings("random", 0.0, 1)
    traced["log"] = {**traced["log"], "tensorboard": True, "wandb": True, "wandb_project": "mine"}
    write_run(tmp_path / "s1", traced, test_error=0.3, misaligned_init=20, realised_h=0.0)
    result = report.write_report(tmp_path)
    assert result["configurations"] == 1 and "log.tensorboard" not in result["keys"]
    assert result["rows"][0]["n_seeds"] == 2 and result["rows"][0]["test_error_mean"] == pytest.approx(0.2)


def test_duplicate_seed_is_ignored_and_noted(tmp_path: Path) -> None:
    write_run(tmp_path / "a", nested_settings("random", 0.0, 0), test_error=0.1, misaligned_init=20, realised_h=0.0)
    write_run(tmp_path / "b", nested_settings("random", 0.0, 0), test_error=0.9, misaligned_init=20, realised_h=0.0)
    result = report.write_report(tmp_path)
    assert result["rows"][0]["n_seeds"] == 1 and result["rows"][0]["test_error_mean"] == pytest.approx(0.1)
    assert "Ignored 1 duplicate run(s)" in (tmp_path / "summary.md").read_text()


def test_unreadable_summary_counts_as_unfinished(tmp_path: Path) -> None:
    write_run(tmp_path / "ok", nested_settings("random", 0.0, 0), test_error=0.1, misaligned_init=20, realised_h=0.0)
    bad = write_run(tmp_path / "bad", nested_settings("random", 0.0, 1), test_error=0.1, misaligned_init=20,
                    realised_h=0.0)
    (bad / "summary.json").write_text("{not json")
    runs, unfinished = report.scan_sweep(tmp_path)
    assert len(runs) == 1 and [u.path.name for u in unfinished] == ["bad"]
    assert unfinished[0].reason.startswith("unreadable results: JSONDecodeError")


# --------------------------------------------------------------------------------------------
# CLI errors


def test_folder_without_runs_is_a_one_line_error_exit_2(tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "running", nested_settings(), test_error=0.1, misaligned_init=20, realised_h=0.0,
              finished=False)
    assert report.main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: no finished runs under {tmp_path}") and "1 unfinished" in captured.err
    assert not (tmp_path / "summary.csv").exists()
    assert report.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'missing'} does not exist: give a sweep folder "
                                       "(one holding run folders)\n")
    (tmp_path / "a-file").write_text("x")
    assert report.main([str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'a-file'} is a file: give a sweep folder "
                                       "(one holding run folders)\n")
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no finished runs under {tmp_path / 'empty'} (a finished run is a folder with summary.json "
        "and rounds.csv); 0 unfinished"]
    assert list((tmp_path / "empty").iterdir()) == []


def unwritable_folder(tmp_path: Path) -> tuple[Path, str]:
    """(a folder this process cannot write into, the reason the report gives): a read-only folder,
    or for root (who writes anywhere) a folder below a file."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder, "Permission denied"
    (tmp_path / "plain-file").write_text("x")
    return tmp_path / "plain-file" / "report", "Not a directory"


def test_out_that_cannot_be_written_is_one_line_exit_2_and_nothing_written(sweep: Path, tmp_path: Path,
                                                                           capsys) -> None:
    before = sorted(path.relative_to(sweep) for path in sweep.rglob("*"))
    out, reason = unwritable_folder(tmp_path)
    try:
        assert report.main([str(sweep), "--out", str(out)]) == 2
    finally:
        if out.name == "read-only":
            out.chmod(0o700)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"error: --out={out} cannot be written ({reason}): give a writable folder"]
    assert sorted(path.relative_to(sweep) for path in sweep.rglob("*")) == before
    assert not out.exists() or list(out.iterdir()) == []
    (tmp_path / "out-file").write_text("x")
    assert report.main([str(sweep), "--out", str(tmp_path / "out-file")]) == 2
    assert capsys.readouterr().err == f"error: --out={tmp_path / 'out-file'} is a file: give a folder\n"
    assert (tmp_path / "out-file").read_text() == "x"


def test_a_write_that_fails_midway_is_one_line_exit_1(sweep: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The disk filling up after the check: one line naming the cause, no traceback, exit 1."""
    def disk_full(path: Path, payload: bytes) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(report, "write_bytes_atomic", disk_full)
    assert report.main([str(sweep), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: [Errno 28] No space left on device")
    assert err.endswith("(--debug shows the traceback)\n")


def test_module_cli_exit_code(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "initmatters.report", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no finished runs under {tmp_path} (a finished run is a folder with summary.json "
        "and rounds.csv); 0 unfinished"]


# --------------------------------------------------------------------------------------------
# Colours: one per initialization, in every panel and figure


def _rgb(colour: Any) -> tuple[float, ...]:
    return tuple(round(c, 6) for c in to_rgb(colour))


def test_init_colour_is_one_fixed_mapping() -> None:
    known = {name: _rgb(report.init_colour(name)) for name in report.INIT_COLOURS}
    assert len(set(known.values())) == len(known)  # inits are told apart
    assert known["random"] == _rgb("tab:blue") and known["pretrained"] == _rgb("tab:orange")
    unlisted = "some_new_init"
    assert _rgb(report.init_colour(unlisted)) == _rgb(report.init_colour(unlisted))  # unlisted: fixed by name
    assert _rgb(report.init_colour(unlisted)) in {_rgb(c) for c in report.SPARE_COLOURS}


def test_each_init_keeps_its_colour_across_panels_and_figures(tmp_path: Path) -> None:
    # tau = 10: random and pretrained; tau = 50: pretrained only (its colour must not shift to the first slot)
    cases = [("random", 10), ("pretrained", 10), ("pretrained", 50)]
    for init, tau in cases:
        for h in (0.0, 1.0):
            write_run(tmp_path / f"{init}-t{tau}-h{h}", nested_settings(init, h, 0, local_steps=tau),
                      test_error=0.1 + h / 10, misaligned_init=20 if init == "random" else 0, realised_h=h)
    groups = report.group_runs(report.load_runs(tmp_path))
    keys = report.varying_keys(groups)
    expected = {init: _rgb(report.init_colour(init)) for init in ("random", "pretrained")}

    figure = report.figure_test_error_vs_h(groups, keys)
    assert figure is not None and len(figure.axes) == 2
    seen = []
    for axis in figure.axes:
        for container in axis.containers:
            init = container.get_label().split(",")[0]
            seen.append((init, _rgb(container.lines[0].get_color())))
    assert sorted(seen) == sorted([("pretrained", expected["pretrained"])] * 2 + [("random", expected["random"])])

    figure = report.figure_misaligned_vs_round(groups, keys)
    assert figure is not None
    lines = [line for axis in figure.axes for line in axis.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 6
    for line in lines:
        assert _rgb(line.get_color()) == expected[line.get_label().split(",")[0].split(" |")[0]]


def test_variants_of_one_init_are_shades_of_its_colour(tmp_path: Path) -> None:
    for steps in (0, 50):
        write_run(tmp_path / f"pre{steps}", nested_settings("pretrained", 0.0, 0, steps=steps),
                  test_error=0.2, misaligned_init=10, realised_h=0.0)
    for init_std in (0.05, 0.1):
        write_run(tmp_path / f"rand{init_std}", nested_settings("random", 0.0, 0, init_std=init_std),
                  test_error=0.2, misaligned_init=20, realised_h=0.0)
    groups = report.group_runs(report.load_runs(tmp_path))
    keys = report.varying_keys(groups)
    colours = report.line_colours(groups, report._init_keys(keys))
    for label, colour in colours.items():
        base = report.init_colour(label.split(",")[0])
        white = {round((c - b) / (1 - b), 6) for c, b in zip(colour, base, strict=True) if b < 1}
        assert len(white) == 1 and 0 <= white.pop() <= 0.6  # the init's colour mixed with white
    assert len(set(colours.values())) == 4

    figure = report.figure_init_variants(groups, keys)
    assert figure is not None
    axis = figure.axes[0]
    bars = _bars(axis)
    assert [label.split(",")[0] for label, _ in bars] == ["random", "random", "pretrained", "pretrained"]
    for label, patch in bars:
        assert _rgb(patch.get_facecolor()) == _rgb(colours[label])
    # each bar's tick names what sets it apart within its init
    assert [t.get_text() for t in axis.get_xticklabels()] == [
        "σ₀ = 0.05", "σ₀ = 0.1", "0 pre-training steps", "50 pre-training steps"]

    figure = report.figure_pretraining_steps(groups, keys)
    assert figure is not None
    for axis in figure.axes:
        for container in axis.containers:
            assert _rgb(container.lines[0].get_color()) == _rgb(report.init_colour("pretrained"))


def test_dirichlet_penalty_is_the_gap_to_the_iid_run_of_the_same_seed(tmp_path: Path) -> None:
    def dirichlet(init: str, seed: int, alpha: float) -> dict[str, Any]:
        settings = nested_settings(init, None, seed, scheme="dirichlet")
        settings["heterogeneity"].update(alpha=alpha, min_partition_size=2)
        return settings

    errors = {("random", 0): (0.15, 0.20), ("random", 1): (0.17, 0.25), ("pretrained", 0): (0.10, 0.11)}
    for (init, seed), (iid_error, skewed_error) in errors.items():
        write_run(tmp_path / f"{init}-iid-{seed}", nested_settings(init, None, seed, scheme="iid"),
                  test_error=iid_error, misaligned_init=20, realised_h=0.05)
        write_run(tmp_path / f"{init}-dir-{seed}", dirichlet(init, seed, 0.1), test_error=skewed_error,
                  misaligned_init=20, realised_h=0.7)
    groups = report.group_runs(report.load_runs(tmp_path))
    rows = {(r["init.name"], r["heterogeneity.name"]): r for r in report.summarize(groups)}
    random_gap = rows[("random", "dirichlet")]
    assert random_gap["heterogeneity_penalty_n"] == 2
    assert random_gap["heterogeneity_penalty_mean"] == pytest.approx((0.05 + 0.08) / 2)
    assert rows[("pretrained", "dirichlet")]["heterogeneity_penalty_mean"] == pytest.approx(0.01)
    assert math.isnan(rows[("random", "iid")]["heterogeneity_penalty_mean"])


# --------------------------------------------------------------------------------------------
# Figures fit for a paper: shared y-axes, legends, bands, bar order, titles


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    report.plt.close("all")  # the figure_* functions return open figures


def _bars(axis: Any) -> list[tuple[str, Any]]:
    """(container label, patch) of every bar, left to right."""
    bars = [(container.get_label(), patch) for container in axis.containers if hasattr(container, "patches")
            for patch in container.patches]
    return sorted(bars, key=lambda item: item[1].get_x())


def _legend_texts(figure: Any) -> list[str]:
    return [text.get_text() for axis in figure.axes if axis.get_legend() for text in axis.get_legend().get_texts()]


def write_penalty_sweep(root: Path, seeds: Sequence[int] = (0, 1)) -> list[report.Group]:
    """heterogeneity_penalty in small: init x h x tau with num_rounds = 50 / tau, `seeds` seeds."""
    for init in ("random", "pretrained"):
        for h in (0.0, 1.0):
            for tau in (10, 50):
                for seed in seeds:
                    error = 0.15 + 0.05 * h + 0.1 * h * (tau == 50) if init == "random" else 0.1
                    misaligned = (20 if tau == 10 else 30) + 2 * seed if init == "random" else 0
                    write_run(root / f"{init}-h{h}-t{tau}-s{seed}",
                              nested_settings(init, h, seed, local_steps=tau, num_rounds=50 // tau),
                              test_error=error + seed / 100, misaligned_init=misaligned, realised_h=h)
    groups = report.group_runs(report.load_runs(root))
    assert report.varying_keys(groups) == ["init.name", "heterogeneity.h", "fl.local_steps", "fl.num_rounds"]
    return groups


def test_compared_panels_share_the_y_axis(tmp_path: Path) -> None:
    groups = write_penalty_sweep(tmp_path)
    keys = report.varying_keys(groups)
    for maker in (report.figure_test_error_vs_h, report.figure_misaligned_vs_round):
        figure = maker(groups, keys)
        assert figure is not None and len(figure.axes) >= 2
        panels = [axis for axis in figure.axes if axis.get_title().startswith("τ = ")]
        assert len(panels) == 2
        limits = {tuple(round(v, 9) for v in axis.get_ylim()) for axis in panels}
        assert len(limits) == 1, (maker.__name__, limits)  # the tau = 50 panel reaches higher: one scale
        top = max(line.get_ydata().max() for axis in panels for line in axis.get_lines() if len(line.get_ydata()))
        assert panels[0].get_ylim()[1] >= top


def test_legends_leave_out_settings_that_follow_from_the_panel(tmp_path: Path) -> None:
    groups = write_penalty_sweep(tmp_path)
    keys = report.varying_keys(groups)
    figure = report.figure_test_error_vs_h(groups, keys)
    labels = [c.get_label() for axis in figure.axes for c in axis.containers] + _legend_texts(figure)
    assert set(labels) == {"random", "pretrained"}  # no num_rounds next to the init
    assert sorted(axis.get_title() for axis in figure.axes) == ["τ = 10, 5 rounds", "τ = 50, 1 round"]
    figure = report.figure_misaligned_vs_round(groups, keys)
    labels = {line.get_label() for axis in figure.axes for line in axis.get_lines()} | set(_legend_texts(figure))
    assert labels == {f"{init}, h = {h}" for init in ("random", "pretrained") for h in (0, 1)}
    assert not any("round" in label for label in labels)


def test_band_and_error_bars_only_with_several_seeds(tmp_path: Path) -> None:
    from matplotlib.collections import PolyCollection

    for seeds, folder in (((0, 1, 2), "three"), ((0,), "one")):
        groups = write_penalty_sweep(tmp_path / folder, seeds)
        keys = report.varying_keys(groups)
        figure = report.figure_misaligned_vs_round(groups, keys)
        bands = [c for axis in figure.axes for c in axis.collections if isinstance(c, PolyCollection)]
        title = figure.get_suptitle()
        errors = report.figure_test_error_vs_h(groups, keys)
        containers = [c for axis in errors.axes for c in axis.containers]
        if len(seeds) > 1:
            assert len(bands) == 8  # one per line: 2 inits x 2 h x 2 panels
            assert "mean ± std over seeds (shaded band), n = 3" in title
            assert all(c.has_yerr for c in containers) and "n = 3" in errors.get_suptitle()
        else:
            assert bands == [] and "std" not in title and "n = 1" in title
            assert not any(c.has_yerr for c in containers) and "std" not in errors.get_suptitle()


def test_titles_name_dataset_and_filter_count_and_rounds_are_integers(tmp_path: Path) -> None:
    groups = write_penalty_sweep(tmp_path)
    keys = report.varying_keys(groups)
    figure = report.figure_misaligned_vs_round(groups, keys)
    assert figure.get_suptitle().startswith("synthetic, 2m = 40 filters: misaligned filters over rounds")
    figure.canvas.draw()
    for axis in figure.axes[:2]:
        assert all(float(tick).is_integer() for tick in axis.get_xticks())
        assert axis.get_xlabel() == "round"
        assert axis.get_lines()[0].get_marker() not in (None, "None", "")
    # the legend sits right of every panel, never on the curves
    legends = [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    assert len(legends) == 1
    renderer = figure.canvas.get_renderer()
    box = legends[0].get_window_extent(renderer)
    assert all(box.x0 >= axis.get_window_extent(renderer).x1 for axis in figure.axes)
    assert report.figure_test_error_vs_h(groups, keys).get_suptitle().startswith("synthetic: final test error")


def test_init_bars_follow_the_alignment_order_in_shades_of_the_init(tmp_path: Path) -> None:
    inits = ("pretrained", "align_flip", "random", "misaligned_fraction")  # written in another order
    for init in inits:
        for init_std in (0.2, 0.05):
            write_run(tmp_path / f"{init}-{init_std}", nested_settings(init, 1.0, 0, init_std=init_std),
                      test_error=0.1 + init_std, misaligned_init=0, realised_h=1.0)
    groups = report.group_runs(report.load_runs(tmp_path))
    keys = report.varying_keys(groups)
    figure = report.figure_init_variants(groups, keys)
    axis = figure.axes[0]
    bars = _bars(axis)
    order = ["random", "misaligned_fraction", "align_flip", "pretrained"]
    assert [label for label, _ in bars] == [f"{init}, σ₀ = {std}" for init in order for std in (0.05, 0.2)]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0.05", "0.2"] * 4  # the variant value on the tick
    for i, init in enumerate(order):
        first, second = (_rgb(patch.get_facecolor()) for _, patch in bars[2 * i: 2 * i + 2])
        assert first == _rgb(report.init_colour(init))  # the init's own colour, then a lighter shade of it
        assert second != first and all(s >= f for s, f in zip(second, first, strict=True))
    assert "single seed (n = 1)" in figure.get_suptitle()
    assert all(container.errorbar is None for container in axis.containers)  # no error bars for one seed


def test_label_histograms_name_the_classes_and_run_lines_take_the_init_colour(tmp_path: Path) -> None:
    from initmatters_core import plots

    figure = plots.label_histogram_figure([[5, 5], [10, 0]], "synthetic", classes=["+1", "-1"])
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["+1", "-1"]
    figure = plots.label_histogram_figure([[5, 0, 1], [0, 4, 2]])
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["0", "1", "2"]

    rows = [{"round": r, "misaligned": 8 - 2 * r, "misaligned_pos": 4 - r, "misaligned_neg": 4 - r,
             "aligned": 2 * r, "test_error": 0.5 - 0.1 * r} for r in range(4)]
    figures = plots.run_figures(rows, "synthetic, test", init="pretrained", filters_per_class=4,
                                model="two_layer_cnn", dataset="synthetic")
    assert list(figures) == ["misaligned.png", "test_error.png"]
    lines = figures["misaligned.png"].axes[0].get_lines()
    assert _rgb(lines[0].get_color()) == _rgb(report.init_colour("pretrained"))
    for line in lines[1:]:  # per-class lines: lighter shades of the same colour
        white = {round((c - b) / (1 - b), 6) for c, b in zip(to_rgb(line.get_color()),
                                                              report.init_colour("pretrained"), strict=True) if b < 1}
        assert len(white) == 1 and 0 < white.pop() <= 0.6
    assert figures["misaligned.png"].axes[0].get_ylabel() == "misaligned filters (of 2m = 8)"
    assert _rgb(figures["test_error.png"].axes[0].get_lines()[0].get_color()) == _rgb("tab:orange")

    # plot_run reads the init from config.yaml and the class names from partition.json
    run = write_run(tmp_path / "run", nested_settings("align_flip", 1.0, 0), test_error=0.1, misaligned_init=0,
                    realised_h=1.0)
    (run / "partition.json").write_text(json.dumps({"classes": ["+1", "-1"], "histograms": [[20, 0], [0, 20]]}))
    written = plots.plot_run(run / "rounds.csv", run / "plots", "t", partition_json=run / "partition.json")
    assert [p.name for p in written] == ["misaligned.png", "test_error.png", "label_histograms.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in written)


def test_population_error_and_penalty_where_measured(tmp_path: Path, sweep: Path) -> None:
    # pop_test_error per (init, h, seed); the penalties pair by seed like the finite-sample ones.
    pop = {("random", 0.0, 0): 0.170, ("random", 0.0, 1): 0.175, ("random", 1.0, 0): 0.190,
           ("random", 1.0, 1): 0.200, ("pretrained", 0.0, 0): 0.100, ("pretrained", 1.0, 0): 0.104}
    for i, ((init, h, seed), value) in enumerate(pop.items()):
        write_run(tmp_path / "pop" / str(i), nested_settings(init, h, seed), test_error=ERRORS[(init, h, seed)],
                  misaligned_init=0, realised_h=h, pop_test_error=value)
    result = report.write_report(tmp_path / "pop")
    rows = {(r["init.name"], r["heterogeneity.h"]): r for r in result["rows"]}
    random_h1 = rows[("random", 1.0)]
    assert random_h1["pop_test_error_mean"] == pytest.approx(0.195)
    assert random_h1["pop_test_error_std"] == pytest.approx(sample_std([0.190, 0.200]))
    assert random_h1["pop_heterogeneity_penalty_mean"] == pytest.approx((0.020 + 0.025) / 2)
    assert random_h1["pop_heterogeneity_penalty_n"] == 2
    assert random_h1["heterogeneity_penalty_mean"] == pytest.approx(0.06)  # the finite-sample one is kept
    assert rows[("pretrained", 1.0)]["pop_heterogeneity_penalty_mean"] == pytest.approx(0.004)
    assert rows[("pretrained", 1.0)]["pop_heterogeneity_penalty_n"] == 1
    text = (tmp_path / "pop" / "summary.md").read_text(encoding="utf-8")
    assert "| heterogeneity penalty | final population test error | population heterogeneity penalty |" in text
    assert "| 0.1950 ± 0.0071 | +0.0225 ± 0.0035 |" in text
    csv_row = row_for(read_summary_csv(tmp_path / "pop" / "summary.csv"), init__name="random", heterogeneity__h="1.0")
    assert float(csv_row["pop_heterogeneity_penalty_mean"]) == pytest.approx(0.0225)
    # Without the population error (the main fixture): blank csv cells, no markdown column.
    report.write_report(sweep)
    assert "population test error" not in (sweep / "summary.md").read_text(encoding="utf-8")
    plain = row_for(read_summary_csv(sweep / "summary.csv"), init__name="random", heterogeneity__h="1.0")
    assert plain["pop_test_error_mean"] == "" and plain["pop_heterogeneity_penalty_n"] == "0"
