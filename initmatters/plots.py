"""Figures of one run, drawn from rounds.csv (and partition.json) alone."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

from initmatters.results import read_rounds_csv, write_bytes_atomic  # noqa: E402

PLOT_FILES = ("misaligned.png", "test_error.png", "signal_learning.png", "first_layer.png",
              "update_diversity.png", "label_histograms.png")

# (file, y label, [(column, legend)]): a figure is drawn when its first column was measured.
_ROUND_FIGURES = (
    (PLOT_FILES[0], "misaligned filters",
     [("misaligned", "all"), ("misaligned_pos", "class +1"), ("misaligned_neg", "class -1")]),
    (PLOT_FILES[1], "test error", [("test_error", "test error")]),
    (PLOT_FILES[2], "mean signal learning gamma",
     [("gamma_aligned_init_mean", "aligned at init"), ("gamma_misaligned_init_mean", "misaligned at init")]),
    (PLOT_FILES[3], "first-layer energy in the data's top PCs",
     [("conv1_pc_energy", "conv1 filters"), ("conv1_pc_energy_chance", "random filters (chance)")]),
    (PLOT_FILES[4], "mean pairwise cosine of client updates", [("update_diversity", "update diversity")]),
)


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def _measured(rows: list[dict[str, float]], column: str) -> bool:
    return any(column in row and not math.isnan(row[column]) for row in rows)


def plot_run(rounds_csv: Path, plots_dir: Path, title: str = "", partition_json: Path | None = None) -> list[Path]:
    """Write the per-round figures whose metrics the run measured (and the label histograms)."""
    rows = read_rounds_csv(rounds_csv)
    rounds = [row["round"] for row in rows]
    written = []
    for file_name, ylabel, columns in _ROUND_FIGURES:
        if not _measured(rows, columns[0][0]):
            continue
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for column, label in columns:
            if _measured(rows, column):
                steps = "steps-post" if column.startswith("misaligned") else "default"
                axis.plot(rounds, [row.get(column, math.nan) for row in rows], label=label, drawstyle=steps)
        axis.set(xlabel="round", ylabel=ylabel, title=title or ylabel)
        if len(columns) > 1:
            axis.legend()
        written.append(plots_dir / file_name)
        _save(figure, written[-1])
    if partition_json is not None and partition_json.exists():
        from initmatters.vision.partitions import plot_label_histograms

        partition = json.loads(partition_json.read_text())
        written.append(plot_label_histograms(partition["histograms"], plots_dir / PLOT_FILES[5], title))
    return written
