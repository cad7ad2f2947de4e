"""Figures of one run, drawn from rounds.csv (and partition.json, config.yaml), and the plotting
conventions every figure of the project shares (initmatters.report uses them too): one colour per
initialization, lighter shades of it for variants, markers on lines, integer round ticks, legends
outside the data area."""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from initmatters_core.federation import heterogeneity_measure  # noqa: E402
from initmatters_core.results import CONFIG_FILE, read_rounds_csv, write_bytes_atomic  # noqa: E402

PLOT_FILES = ("misaligned.png", "test_error.png", "signal_learning.png", "first_layer.png",
              "update_diversity.png", "label_histograms.png")

# One colour per initialization, the same in every figure of every run and report (matplotlib's
# tab10); an init not listed gets a spare colour fixed by its name. Variants of one init are
# lighter shades of its colour (shade()).
INIT_COLOURS = {
    "random": "tab:blue",
    "pretrained": "tab:orange",
    "align_flip": "tab:green",
    "misaligned_fraction": "tab:red",
    "checkpoint": "tab:purple",
    "proxy_pretrained": "tab:olive",  # the image task's inits
    "imagenet": "tab:brown",
}
SPARE_COLOURS = ("tab:pink", "tab:cyan", "tab:gray")
# Inits in order of increasing alignment of the filters with the signal at round 0; other inits
# follow alphabetically.
INIT_ORDER = ("random", "misaligned_fraction", "align_flip", "pretrained")
REFERENCE_COLOUR = "0.45"  # reference lines (chance level): grey
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1.5)), (0, (1, 2.5)))
# Binary labels: two neutral colours, so that class colours are never mistaken for init colours.
BINARY_CLASS_COLOURS = ("0.25", "0.7")

STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "errorbar.capsize": 3,
    "legend.frameon": False,
    "savefig.dpi": 150,
}


@contextmanager
def style() -> Iterator[None]:
    """The project's figure style (rc settings) for figures created inside the block."""
    with plt.rc_context(STYLE):
        yield


def init_colour(name: Any) -> tuple[float, float, float]:
    """The colour of an initialization (init.name), the same in every figure."""
    if name in INIT_COLOURS:
        return to_rgb(INIT_COLOURS[name])
    return to_rgb(SPARE_COLOURS[zlib.crc32(str(name).encode()) % len(SPARE_COLOURS)])


def shade(colour: Any, white: float) -> tuple[float, float, float]:
    """`colour` mixed with a share `white` of white (0: the colour itself)."""
    return tuple(c + (1.0 - c) * white for c in to_rgb(colour))


def init_rank(name: Any) -> tuple:
    """Sort key of init names: INIT_ORDER first, then the others alphabetically."""
    return (INIT_ORDER.index(name), "") if name in INIT_ORDER else (len(INIT_ORDER), str(name))


def integer_ticks(axis: Any, which: str = "x") -> None:
    """Integer tick positions on the x (rounds, steps) or y axis (counts)."""
    target = axis.xaxis if which == "x" else axis.yaxis
    target.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def marker_every(points: int, target: int = 12) -> int:
    """A marker every n points so that a line of `points` points shows about `target` markers."""
    return max(1, math.ceil(points / target))


def filters_text(model: Any, dataset: Any, filters_per_class: Any, row: Mapping[str, float] | None = None) -> str:
    """The filter count of a run: '2m = 40 filters' (the two-layer CNN of the synthetic task) or
    'C·m = 10·10 = 100 filters' (patch_cnn: C from the aligned_class<c> columns of a rounds.csv
    `row`, else from aligned + misaligned); '' when unknown."""
    m = filters_per_class
    if not isinstance(m, int) or isinstance(m, bool) or m <= 0:
        return ""
    if model in (None, "two_layer_cnn") and dataset in (None, "synthetic"):
        return f"2m = {2 * m} filters"
    row = row or {}
    classes = sum(1 for column in row if column.startswith("aligned_class"))
    total = row.get("aligned", math.nan) + row.get("misaligned", math.nan)
    if not classes and not math.isnan(total) and total % m == 0:
        classes = int(total) // m
    return f"C·m = {classes}·{m} = {classes * m} filters" if classes else ""


def render_png(figure: plt.Figure) -> bytes:
    """`figure` as PNG bytes; closes it."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=STYLE["savefig.dpi"], bbox_inches="tight")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Write `figure` as a PNG atomically and close it; returns the path."""
    write_bytes_atomic(Path(path), render_png(figure))
    return Path(path)


# --------------------------------------------------------------------------------------------
# Figures of one run

# (file, y label, integer y, [(column, legend)]): drawn when its first column was measured. The
# first series of a figure is drawn in the init's colour, the others in lighter shades of it with
# their own line style and marker; "(chance)" series are grey reference lines.
_ROUND_FIGURES = (
    (PLOT_FILES[0], "misaligned filters", True,
     [("misaligned", "all filters"), ("misaligned_pos", "class +1"), ("misaligned_neg", "class -1")]),
    (PLOT_FILES[1], "test error", False, [("test_error", "test error")]),
    (PLOT_FILES[2], "mean signal learning γ", False,
     [("gamma_aligned_init_mean", "aligned at init"), ("gamma_misaligned_init_mean", "misaligned at init")]),
    (PLOT_FILES[3], "first-layer energy in the data's top PCs", False,
     [("conv1_pc_energy", "conv1 filters"), ("conv1_pc_energy_chance", "random filters (chance)")]),
    (PLOT_FILES[4], "mean pairwise cosine of client updates", False, [("update_diversity", "update diversity")]),
)


def _measured(rows: list[dict[str, float]], column: str) -> bool:
    return any(column in row and not math.isnan(row[column]) for row in rows)


def _run_config(rounds_csv: Path) -> Mapping[str, Any]:
    """The run's config.yaml (next to rounds.csv) as a dict; {} when absent or unreadable."""
    path = Path(rounds_csv).parent / CONFIG_FILE
    try:
        import yaml  # a dependency of hydra-core; only needed here

        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001  (a missing or odd config only costs the colour)
        return {}
    return loaded if isinstance(loaded, Mapping) else {}


def _section_name(config: Mapping[str, Any], section: str) -> str | None:
    value = config.get(section)
    if isinstance(value, Mapping):
        value = value.get("name")
    return value if isinstance(value, str) else None


def plot_run(rounds_csv: Path, plots_dir: Path, title: str = "", partition_json: Path | None = None,
             init: str | None = None, dataset: str | None = None) -> list[Path]:
    """Write the per-round figures whose metrics the run measured (and the label histograms).

    Lines take the colour of the run's init (`init`, default: init.name of the config.yaml next to
    rounds.csv); titles name the dataset (`dataset`, default: data.name of that config)."""
    config = _run_config(rounds_csv)
    init = init if init is not None else _section_name(config, "init")
    dataset = dataset if dataset is not None else _section_name(config, "data")
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    figures = run_figures(read_rounds_csv(rounds_csv), ", ".join(p for p in (dataset, title) if p), init=init,
                          filters_per_class=model.get("filters_per_class"), model=model.get("name"), dataset=dataset)
    written = [save_figure(figure, plots_dir / name) for name, figure in figures.items()]
    if partition_json is not None and Path(partition_json).exists():
        partition = json.loads(Path(partition_json).read_text())
        written.append(plot_label_histograms(partition["histograms"], plots_dir / PLOT_FILES[5],
                                             ", ".join(p for p in (dataset, title) if p),
                                             classes=partition.get("classes")))
    return written


def run_figures(rows: Sequence[Mapping[str, float]], title: str = "", *, init: str | None = None,
                filters_per_class: Any = None, model: Any = None, dataset: Any = None) -> dict[str, plt.Figure]:
    """{file name: figure} of the per-round metrics a run measured (rounds.csv rows). The first
    series of a figure is drawn in the init's colour, the others in lighter shades of it with their
    own line style and marker; '(chance)' series are grey reference lines."""
    rounds = [row["round"] for row in rows]
    base = init_colour(init) if init is not None else to_rgb("tab:blue")
    filters = filters_text(model, dataset, filters_per_class, rows[0] if rows else None)
    figures = {}
    for file_name, ylabel, integer_y, columns in _ROUND_FIGURES:
        if not _measured(rows, columns[0][0]):
            continue
        drawn = [(column, label) for column, label in columns if _measured(rows, column)]
        with style():
            figure, axis = plt.subplots(figsize=(5.2, 3.4), layout="constrained")
            every = marker_every(len(rows))
            for i, (column, label) in enumerate(drawn):
                reference = "(chance)" in label
                colour = REFERENCE_COLOUR if reference else shade(base, 0.45 * i / max(1, len(drawn) - 1))
                axis.plot(rounds, [row.get(column, math.nan) for row in rows], label=label, color=colour,
                          linestyle="--" if reference else LINE_STYLES[i % len(LINE_STYLES)],
                          marker=None if reference else MARKERS[i % len(MARKERS)], markevery=(i % every, every),
                          drawstyle="steps-post" if column.startswith("misaligned") else "default",
                          linewidth=2.0 if i == 0 else 1.4)
            if file_name == PLOT_FILES[0] and filters:
                ylabel = f"{ylabel} (of {filters.removesuffix(' filters')})"
            axis.set(xlabel="round", ylabel=ylabel)
            axis.set_title(title or ylabel, fontsize="medium")
            integer_ticks(axis, "x")
            if integer_y:
                integer_ticks(axis, "y")
            if len(drawn) > 1:
                axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        figures[file_name] = figure
    return figures


def plot_label_histograms(histograms: np.ndarray, path: str | Path, title: str = "",
                          classes: Sequence[str] | None = None) -> Path:
    """PNG of the per-client label histograms (label_histogram_figure), written atomically; returns the path."""
    return save_figure(label_histogram_figure(histograms, title, classes), Path(path))


def label_histogram_figure(histograms: np.ndarray, title: str = "", classes: Sequence[str] | None = None) -> plt.Figure:
    """The per-client label histograms. Up to 20 classes: one stacked bar per client (colour =
    class, named by `classes`, e.g. the synthetic task's "+1", "-1" from partition.json; default
    0, 1, ...); more classes: a heat map clients x classes (the count in each cell)."""
    counts = np.asarray(histograms)
    num_classes = counts.shape[1]
    names = [str(c) for c in classes] if classes is not None and len(classes) == num_classes else [
        str(c) for c in range(num_classes)]
    with style():
        figure, axes = plt.subplots(figsize=(max(4.0, 0.4 * counts.shape[0] + 2.8), 3.4), layout="constrained")
        try:
            _draw_histograms(figure, axes, counts, names, title)
        except BaseException:
            plt.close(figure)
            raise
    return figure


def _draw_histograms(figure: plt.Figure, axes: Any, counts: np.ndarray, names: Sequence[str], title: str) -> None:
    num_clients, num_classes = counts.shape
    clients = np.arange(num_clients)
    if num_classes <= 20:
        if num_classes == 2:
            colours = list(BINARY_CLASS_COLOURS)
        else:
            colormap = plt.get_cmap("tab20" if num_classes > 10 else "tab10")
            colours = [colormap(label) for label in range(num_classes)]
        bottom = np.zeros(num_clients)
        for label in range(num_classes):
            axes.bar(clients, counts[:, label], bottom=bottom, color=colours[label], label=names[label],
                     width=0.8, edgecolor="white", linewidth=0.5)
            bottom += counts[:, label]
        axes.set_ylabel("examples")
        integer_ticks(axes, "y")
        axes.grid(False, axis="x")
        axes.legend(title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                    ncol=1 if num_classes <= 10 else 2)
    else:
        image = axes.imshow(counts.T, aspect="auto", interpolation="nearest", cmap="viridis")
        axes.set_ylabel("class")
        axes.grid(False)
        figure.colorbar(image, ax=axes, label="examples")
    step = max(1, math.ceil(num_clients / 25))
    axes.set_xticks(clients[::step])
    axes.set_xlabel("client")
    heterogeneity = heterogeneity_measure(counts)
    axes.set_title(f"{title + ': ' if title else ''}label histograms (H = {heterogeneity:.3f})", fontsize="medium")
