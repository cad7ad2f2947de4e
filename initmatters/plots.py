"""Figures of one run, drawn from rounds.csv alone."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

from initmatters.results import read_rounds_csv, write_bytes_atomic  # noqa: E402

PLOT_FILES = ("misaligned.png", "test_error.png", "signal_learning.png")


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def plot_run(rounds_csv: Path, plots_dir: Path, title: str = "") -> list[Path]:
    """Write misaligned-vs-round, test-error-vs-round and gamma-vs-round PNGs; return their paths."""
    rows = read_rounds_csv(rounds_csv)
    rounds = [row["round"] for row in rows]
    written = []

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for column, label in (("misaligned", "all"), ("misaligned_pos", "class +1"), ("misaligned_neg", "class -1")):
        axis.plot(rounds, [row[column] for row in rows], label=label, drawstyle="steps-post")
    axis.set(xlabel="round", ylabel="misaligned filters", title=title or "Misaligned filters")
    axis.legend()
    written.append(plots_dir / PLOT_FILES[0])
    _save(figure, written[-1])

    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(rounds, [row["test_error"] for row in rows], label="test error")
    axis.set(xlabel="round", ylabel="test error", title=title or "Test error")
    written.append(plots_dir / PLOT_FILES[1])
    _save(figure, written[-1])

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for column, label in (("gamma_aligned_init_mean", "aligned at init"),
                          ("gamma_misaligned_init_mean", "misaligned at init")):
        axis.plot(rounds, [row[column] for row in rows], label=label)
    axis.set(xlabel="round", ylabel="mean signal learning gamma", title=title or "Signal learning")
    axis.legend()
    written.append(plots_dir / PLOT_FILES[2])
    _save(figure, written[-1])
    return written
