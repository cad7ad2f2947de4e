"""The report's "where the heterogeneity penalty lands" section on small fabricated sweeps (no
training): the split of the penalty into the part align_flip removes and the residual, against
hand-computed numbers, paired by seed; absent (and the report unchanged) without the inits."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
from test_report import PNG_MAGIC, nested_settings, sample_std, write_penalty_sweep, write_run

from initmatters import penalty, report

TAUS = (10, 50)
NUM_ROUNDS = 3
# Population test error per (init, h, seed) at tau = 10; at tau = 50 random's h = 1 errors are
# 0.030 higher (its penalty too), everything else is the same.
POP = {
    ("random", 0.0): {0: 0.170, 1: 0.180, 2: 0.175},
    ("random", 1.0): {0: 0.190, 1: 0.205, 2: 0.185},  # penalties 0.020, 0.025, 0.010
    ("align_flip", 0.0): {0: 0.120, 1: 0.130, 2: 0.125},
    ("align_flip", 1.0): {0: 0.125, 1: 0.128, 2: 0.127},  # penalties 0.005, -0.002, 0.002
    ("pretrained", 0.0): {0: 0.100, 1: 0.101, 2: 0.102},
    ("pretrained", 1.0): {0: 0.103, 1: 0.100, 2: 0.104},  # penalties 0.003, -0.001, 0.002
}
# Hand computation at tau = 10, seeds 0, 1, 2:
RANDOM_PENALTY = [0.020, 0.025, 0.010]
ALIGN_FLIP_PENALTY = [0.005, -0.002, 0.002]
REMOVED = [0.015, 0.027, 0.008]  # random - align_flip, seed by seed
PRETRAINED_PENALTY = [0.003, -0.001, 0.002]
# Final signal learning gamma per (init, h), seed s adds 0.1 s at h = 0 and 0.098 s at h = 1 (i.e. -2 %).
GAMMA_ALIGNED = {0.0: 1.0, 1.0: 0.98}  # of the filters aligned at init: -2 % under h = 1
GAMMA_MISALIGNED = {0.0: 1.0, 1.0: 0.6}  # of random's filters misaligned at init: -40 %


def gamma_columns(init: str, h: float, seed: int) -> dict[str, list[float]]:
    """gamma_* rounds.csv columns rising linearly from 0 to their final value; align_flip and
    pretrained have no filter misaligned at init (blank)."""
    aligned = GAMMA_ALIGNED[h] * (1 + 0.1 * seed)
    misaligned = GAMMA_MISALIGNED[h] * (1 + 0.1 * seed) if init == "random" else math.nan
    return {"gamma_aligned_init_mean": [aligned * r / NUM_ROUNDS for r in range(NUM_ROUNDS + 1)],
            "gamma_misaligned_init_mean": [misaligned * r / NUM_ROUNDS for r in range(NUM_ROUNDS + 1)]}


def write_decomposition_sweep(root: Path, inits: tuple[str, ...] = ("random", "align_flip", "pretrained"),
                              seeds: Mapping[tuple[str, float], tuple[int, ...]] | None = None,
                              with_pop: bool = True) -> Path:
    """init x h {0, 1} x tau {10, 50} with the POP errors (test_error = pop + 0.05: the finite-set
    error differs, so the tests see which one is used); job folders numbered in reverse seed order."""
    job = 0
    for init in inits:
        for h in (0.0, 1.0):
            for tau in TAUS:
                for seed in sorted((seeds or {}).get((init, h), (0, 1, 2)), reverse=True):
                    pop = POP[init, h][seed] + (0.030 if (init, h, tau) == ("random", 1.0, 50) else 0.0)
                    write_run(root / f"{job:03d}", nested_settings(init, h, seed, local_steps=tau,
                                                                   num_rounds=NUM_ROUNDS),
                              test_error=pop + 0.05, misaligned_init=20 if init == "random" else 0, realised_h=h,
                              pop_test_error=pop if with_pop else None, columns=gamma_columns(init, h, seed))
                    job += 1
    return root


def found_in(root: Path) -> list[penalty.Decomposition]:
    return penalty.decompositions(report.group_runs(report.load_runs(root)))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    penalty.plt.close("all")


# --------------------------------------------------------------------------------------------
# Arithmetic


def test_split_matches_a_hand_computation(tmp_path: Path) -> None:
    found = found_in(write_decomposition_sweep(tmp_path / "sweep"))
    assert [d.context["fl.local_steps"] for d in found] == [10, 50]
    tau10, tau50 = found
    assert tau10.metric == "pop_test_error"
    assert list(tau10.random.values.values()) == pytest.approx(RANDOM_PENALTY)
    assert list(tau10.align_flip.values.values()) == pytest.approx(ALIGN_FLIP_PENALTY)
    assert list(tau10.removed.values.values()) == pytest.approx(REMOVED)
    assert tau10.random.mean == pytest.approx(sum(RANDOM_PENALTY) / 3)
    assert tau10.random.std == pytest.approx(sample_std(RANDOM_PENALTY))
    assert tau10.removed.mean == pytest.approx(0.050 / 3)
    assert tau10.removed.std == pytest.approx(sample_std(REMOVED))
    assert tau10.align_flip.mean == pytest.approx(0.005 / 3)
    assert tau10.removed.mean + tau10.align_flip.mean == pytest.approx(tau10.random.mean)
    assert tau10.share_removed == pytest.approx(0.050 / 0.055)
    assert (tau10.random.positive, tau10.removed.positive, tau10.align_flip.positive) == (3, 3, 2)
    assert list(tau10.others) == ["pretrained"]
    assert list(tau10.others["pretrained"].values.values()) == pytest.approx(PRETRAINED_PENALTY)
    assert tau10.others["pretrained"].positive == 2
    # tau = 50: random's penalty 0.030 higher, align_flip's unchanged: all of it lands in `removed`.
    assert list(tau50.removed.values.values()) == pytest.approx([r + 0.030 for r in REMOVED])
    assert list(tau50.align_flip.values.values()) == pytest.approx(ALIGN_FLIP_PENALTY)


def test_signal_learning_change_of_aligned_and_misaligned_at_init(tmp_path: Path) -> None:
    tau10 = found_in(write_decomposition_sweep(tmp_path / "sweep"))[0]
    assert set(tau10.gamma_change) == {("random", "aligned at init"), ("random", "misaligned at init"),
                                       ("align_flip", "aligned at init"), ("pretrained", "aligned at init")}
    for init in ("random", "align_flip", "pretrained"):
        change = tau10.gamma_change[init, "aligned at init"]
        assert list(change.values.values()) == pytest.approx([-0.02] * 3)  # 0.98 (1 + 0.1 s) / (1 + 0.1 s) - 1
        assert change.positive == 0
    assert tau10.gamma_change["random", "misaligned at init"].mean == pytest.approx(-0.4)


def test_runs_pair_by_seed_not_by_position(tmp_path: Path) -> None:
    # random h = 0 has seeds 0, 1, 2 and h = 1 seeds 1, 2 (in reverse folder order); align_flip all
    # three: the split uses the seeds every one of the four has, each paired with itself.
    root = write_decomposition_sweep(tmp_path / "sweep", seeds={("random", 1.0): (1, 2)})
    tau10 = found_in(root)[0]
    assert list(tau10.random.values) == [1, 2]
    assert list(tau10.random.values.values()) == pytest.approx(RANDOM_PENALTY[1:])
    assert list(tau10.align_flip.values.values()) == pytest.approx(ALIGN_FLIP_PENALTY[1:])
    assert list(tau10.removed.values.values()) == pytest.approx(REMOVED[1:])
    assert tau10.random.positive == 2 and tau10.align_flip.positive == 1
    assert list(tau10.others["pretrained"].values) == [0, 1, 2]  # another init pairs over its own seeds


def test_test_error_where_the_population_error_is_missing(tmp_path: Path) -> None:
    tau10 = found_in(write_decomposition_sweep(tmp_path / "sweep", with_pop=False))[0]
    assert tau10.metric == "test_error"
    assert list(tau10.random.values.values()) == pytest.approx(RANDOM_PENALTY)  # test_error = pop + 0.05


# --------------------------------------------------------------------------------------------
# Report output


def test_report_writes_section_csv_and_figure(tmp_path: Path) -> None:
    root = write_decomposition_sweep(tmp_path / "sweep")
    result = report.write_report(root)
    figure = root / "figures" / penalty.FIGURE_FILE
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert figure in result["files"] and root / penalty.CSV_FILE in result["files"]
    text = (root / "summary.md").read_text(encoding="utf-8")
    assert "## Where the heterogeneity penalty lands" in text
    assert text.index("## Where the heterogeneity penalty lands") < text.index("## Figures")
    assert f"![penalty_decomposition](figures/{penalty.FIGURE_FILE})" in text
    random = f"+{0.055 / 3:.4f} ± {sample_std(RANDOM_PENALTY):.4f} (3/3 > 0)"
    removed = f"+{0.050 / 3:.4f} ± {sample_std(REMOVED):.4f} (3/3 > 0)"
    residual = f"+{0.005 / 3:.4f} ± {sample_std(ALIGN_FLIP_PENALTY):.4f} (2/3 > 0)"
    pretrained = f"+{0.004 / 3:.4f} ± {sample_std(PRETRAINED_PENALTY):.4f} (2/3 > 0)"
    assert f"| τ = 10 | 3 | {random} | {removed} | {residual} | 91 % | {pretrained} |" in text
    assert "| τ = 10 | -2.0 ± 0.0 % (0/3 > 0) | -40.0 ± 0.0 % (0/3 > 0) | -2.0 ± 0.0 % (0/3 > 0) |" in text
    with open(root / penalty.CSV_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    removed_row = next(r for r in rows if r["setting"] == "τ = 10" and r["quantity"] == "removed_by_align_flip")
    assert float(removed_row["mean"]) == pytest.approx(0.050 / 3)
    assert removed_row["metric"] == "pop_test_error" and removed_row["seeds_positive"] == "3"


def test_figure_shows_the_seed_means_on_shared_axes(tmp_path: Path) -> None:
    found = found_in(write_decomposition_sweep(tmp_path / "sweep"))
    figure = penalty.make_figure(found)
    gamma_axes, bars = figure.axes[:4], figure.axes[4]
    aligned_tau10 = next(ax for ax in gamma_axes if ax.get_title() == "(a) τ = 10: filters aligned at init")
    line = next(ln for ln in aligned_tau10.get_lines() if ln.get_label() == "random, h = 0")
    mean_final = sum(1.0 + 0.1 * s for s in range(3)) / 3
    assert list(line.get_ydata()) == pytest.approx([mean_final * r / NUM_ROUNDS for r in range(NUM_ROUNDS + 1)])
    assert list(line.get_xdata()) == [0, 1, 2, 3]
    assert aligned_tau10.collections  # the ± std band
    assert all(ax.get_shared_y_axes().joined(gamma_axes[0], ax) for ax in gamma_axes)
    misaligned = [ax for ax in gamma_axes if "misaligned" in ax.get_title()]
    assert all({ln.get_label() for ln in ax.get_lines()} == {"random, h = 0", "random, h = 1"} for ax in misaligned)
    heights = {}
    for container in bars.containers:
        if hasattr(container, "patches"):
            heights.setdefault(container.get_label(), []).extend(p.get_height() for p in container.patches)
    assert heights["penalty random"] == pytest.approx([0.055 / 3, 0.055 / 3 + 0.030])
    assert heights["removed by align_flip (misaligned at init)"] == pytest.approx([0.050 / 3, 0.050 / 3 + 0.030])
    assert heights["residual = penalty align_flip (aligned at init)"] == pytest.approx([0.005 / 3] * 2)
    assert heights["penalty pretrained"] == pytest.approx([0.004 / 3] * 2)


@pytest.mark.parametrize("inits", [("random", "pretrained"), ("align_flip", "pretrained"), ("random",)])
def test_no_section_without_random_and_align_flip(tmp_path: Path, inits: tuple[str, ...]) -> None:
    root = write_decomposition_sweep(tmp_path / "sweep", inits=inits)
    assert found_in(root) == []
    result = report.write_report(root)
    assert "heterogeneity penalty lands" not in (root / "summary.md").read_text(encoding="utf-8")
    assert not (root / penalty.CSV_FILE).exists() and not (root / "figures" / penalty.FIGURE_FILE).exists()
    assert all("penalty_decomposition" not in path.name for path in result["files"])


def test_no_section_without_both_h(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for init in ("random", "align_flip"):
        for h in (0.0, 0.5):
            write_run(root / f"{init}-{h}", nested_settings(init, h, 0), test_error=0.2, misaligned_init=0,
                      realised_h=h)
    assert found_in(root) == []


def test_existing_report_output_is_unchanged(tmp_path: Path) -> None:
    # The heterogeneity_penalty layout (random, pretrained): the same files and summary.md as a
    # report that has no such section (render_markdown without sections).
    root = tmp_path / "sweep"
    groups = write_penalty_sweep(root)
    result = report.write_report(root)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(("random", "pretrained"))) == [
        "figures", "summary.csv", "summary.md"]
    assert sorted(p.name for p in (root / "figures").iterdir()) == [
        "init_variants.png", "misaligned_vs_round.png", "test_error_vs_h.png"]
    keys = report.varying_keys(groups)
    notes = ["Server wall time of the finished runs: 32.0 s in total, 2.0 s per run."]
    figures = [f"figures/{name}" for name in ("test_error_vs_h.png", "misaligned_vs_round.png", "init_variants.png")]
    expected = report.render_markdown(report.summarize(groups, keys), keys, [], source=str(root), n_runs=16,
                                      figures=figures, notes=notes)
    assert (root / "summary.md").read_text(encoding="utf-8") == expected
    assert len(result["files"]) == 5


def test_stale_section_files_are_removed(tmp_path: Path) -> None:
    root = write_decomposition_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    report.write_report(root, out)
    assert (out / penalty.CSV_FILE).exists() and (out / "figures" / penalty.FIGURE_FILE).exists()
    for folder in root.iterdir():  # the align_flip runs are gone: no decomposition any more
        if (folder / "summary.json").exists() and "align_flip" in (folder / "config.yaml").read_text():
            (folder / "summary.json").unlink()
    report.write_report(root, out)
    assert not (out / penalty.CSV_FILE).exists() and not (out / "figures" / penalty.FIGURE_FILE).exists()
