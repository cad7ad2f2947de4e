"""Where the heterogeneity penalty lands: a section of the sweep report (initmatters.report).

align_flip is the random draw with every misaligned filter's mu-component reflected: the same
filters, norms and noise directions, all aligned at round 0, no signal head start. So, per seed
(the same data and the same draw),

    penalty(init)  = error(init, h = 1) - error(init, h = 0)
    removed        = penalty(random) - penalty(align_flip)   the part carried by the filters
                                                             misaligned at init
    residual       = penalty(align_flip)                     what label skew does to filters
                                                             that start aligned

and removed + residual = penalty(random) exactly. The error is the population test error
(pop_test_error) where every run of random and align_flip has it, else the finite test set's
test_error. A decomposition is made for every set of shared settings ("context": all but the
init and h, e.g. one per tau) that has random and align_flip runs of label skew at h = 0 and
h = 1; the penalties of the other inits of that context (pretrained) are given alongside, and
the final signal learning gamma of the filters aligned and misaligned at init (rounds.csv
gamma_aligned_init_mean, gamma_misaligned_init_mean) at h = 1 relative to h = 0.

Output (only for sweeps that have such runs): a markdown section for summary.md, the CSV
penalty_decomposition.csv and the figure penalty_decomposition.png.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

from initmatters.sweep_common import (  # noqa: E402
    H_KEY,
    INIT_KEY,
    SCHEME_KEY,
    TAU_KEY,
    format_key_value,
    format_mean_std,
    freeze,
    freeze_value,
    mean_curve,
    mean_std,
    sort_value,
)
from initmatters_core.plots import (  # noqa: E402
    LINE_STYLES,
    MARKERS,
    filters_text,
    init_colour,
    init_rank,
    integer_ticks,
    marker_every,
    render_png,
    shade,
    style,
)
from initmatters_core.results import format_cell  # noqa: E402

FIGURE_FILE = "penalty_decomposition.png"
CSV_FILE = "penalty_decomposition.csv"
RANDOM, ALIGN_FLIP = "random", "align_flip"
HS = (0.0, 1.0)  # the penalty compares full label skew with IID labels
GAMMA_COLUMNS = {"aligned at init": "gamma_aligned_init_mean", "misaligned at init": "gamma_misaligned_init_mean"}
SEED_DOTS = "one seed"
METRICS = ("pop_test_error", "test_error")  # the first that every random and align_flip run has


class Run(Protocol):
    """What this section reads of a finished run (initmatters.report.Run)."""

    rounds: list[dict[str, float]]

    @property
    def seed(self) -> Any: ...

    def metric(self, name: str) -> float: ...


class Group(Protocol):
    """What this section reads of a configuration (initmatters.report.Group)."""

    settings: dict[str, Any]
    runs: list[Run]

    def by_seed(self) -> dict[Any, Run]: ...


@dataclass(frozen=True)
class OverSeeds:
    """One quantity per seed (seed order) and its statistics over seeds."""

    values: dict[Any, float]  # seed -> value

    @property
    def mean(self) -> float:
        return mean_std(self.values.values())[0]

    @property
    def std(self) -> float:
        return mean_std(self.values.values())[1]

    @property
    def positive(self) -> int:
        return sum(1 for value in self.values.values() if value > 0)

    @property
    def n(self) -> int:
        return len(self.values)

    def text(self, decimals: int = 4) -> str:
        """'+0.0470 ± 0.0038 (8/8 > 0)' (signed mean); '' without values."""
        if not self.values:
            return ""
        return f"{format_mean_std(self.mean, self.std, decimals, signed=True)} ({self.positive}/{self.n} > 0)"


@dataclass
class Decomposition:
    """The penalty split of one context (the settings shared by its runs, without init and h)."""

    context: dict[str, Any]
    metric: str  # pop_test_error or test_error
    random: OverSeeds  # penalty(random), over the seeds with all four random and align_flip runs
    align_flip: OverSeeds  # penalty(align_flip) = the residual, same seeds
    removed: OverSeeds  # penalty(random) - penalty(align_flip), same seeds
    others: dict[str, OverSeeds] = field(default_factory=dict)  # init label -> its penalty (its own seeds)
    gamma_change: dict[tuple[str, str], OverSeeds] = field(default_factory=dict)  # (init, group) -> γ(h=1)/γ(h=0) - 1
    groups: dict[tuple[str, float], Group] = field(default_factory=dict)  # (init label, h) -> runs, for the figure

    @property
    def share_removed(self) -> float:
        """mean(removed) / mean(penalty(random)): the share of the penalty align_flip removes."""
        total = self.random.mean
        return self.removed.mean / total if total and not math.isnan(total) else math.nan


# --------------------------------------------------------------------------------------------
# Computation


def decompositions(groups: Sequence[Group]) -> list[Decomposition]:
    """One Decomposition per context with random and align_flip label_skew runs at h = 0 and 1
    (sorted by tau, then the other settings); [] when the sweep has none."""
    contexts: dict[tuple, dict[tuple[str, float], Group]] = {}
    shared: dict[tuple, dict[str, Any]] = {}
    for group in groups:
        h = group.settings.get(H_KEY)
        if group.settings.get(SCHEME_KEY) != "label_skew" or h not in HS:
            continue
        context = context_of(group.settings)
        key = freeze(context)
        shared[key] = context
        contexts.setdefault(key, {})
        contexts[key].setdefault((_init_label(group, groups), float(h)), group)
    found = []
    for key, by_init in contexts.items():
        if all((init, h) in by_init for init in (RANDOM, ALIGN_FLIP) for h in HS):
            found.append(_decompose(shared[key], by_init))
    return sorted(found, key=lambda d: (sort_value(d.context.get(TAU_KEY)),
                                        tuple(sort_value(v) for _, v in freeze(d.context))))


def context_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a decomposition's runs share: all but init.* and heterogeneity.h."""
    return {k: v for k, v in settings.items() if not k.startswith("init.") and k != H_KEY}


def _init_label(group: Group, groups: Sequence[Group]) -> str:
    """The init's name, or 'name, key=value' for variants (several groups of one init.name in one
    context, e.g. pretrained with two init.steps): their differing init.* settings."""
    name = group.settings.get(INIT_KEY)
    context = freeze(context_of(group.settings))
    siblings = [g for g in groups if g.settings.get(INIT_KEY) == name and freeze(context_of(g.settings)) == context]
    differing = sorted(k for k in group.settings if k.startswith("init.") and k != INIT_KEY
                       and len({freeze_value(g.settings.get(k)) for g in siblings}) > 1)
    return ", ".join([str(name), *(format_key_value(k, group.settings.get(k)) for k in differing)])


def paired_penalty(low: Group, high: Group, metric: str, seeds: Sequence[Any] | None = None) -> OverSeeds:
    """metric(h = 1) - metric(h = 0) per seed present in both (and in `seeds`, if given), NaN left out."""
    baseline = low.by_seed()
    values = {}
    for run in high.runs:
        if run.seed in baseline and (seeds is None or run.seed in seeds):
            gap = run.metric(metric) - baseline[run.seed].metric(metric)
            if not math.isnan(gap):
                values[run.seed] = gap
    return OverSeeds(values)


def _decompose(context: dict[str, Any], by_init: dict[tuple[str, float], Group]) -> Decomposition:
    core = [by_init[init, h] for init in (RANDOM, ALIGN_FLIP) for h in HS]
    metric = next((m for m in METRICS if all(not math.isnan(r.metric(m)) for g in core for r in g.runs)), METRICS[-1])
    seed_sets = [set(g.by_seed()) for g in core]
    common = set.intersection(*seed_sets)
    random = paired_penalty(by_init[RANDOM, 0.0], by_init[RANDOM, 1.0], metric, common)
    align_flip = paired_penalty(by_init[ALIGN_FLIP, 0.0], by_init[ALIGN_FLIP, 1.0], metric, common)
    seeds = [s for s in random.values if s in align_flip.values]
    random = OverSeeds({s: random.values[s] for s in seeds})
    align_flip = OverSeeds({s: align_flip.values[s] for s in seeds})
    removed = OverSeeds({s: random.values[s] - align_flip.values[s] for s in seeds})
    inits = sorted({init for init, _ in by_init}, key=init_rank)
    others = {init: paired_penalty(by_init[init, 0.0], by_init[init, 1.0], metric)
              for init in inits if init not in (RANDOM, ALIGN_FLIP) and all((init, h) in by_init for h in HS)}
    gamma_change = {}
    for init in inits:
        if not all((init, h) in by_init for h in HS):
            continue
        for name, column in GAMMA_COLUMNS.items():
            change = _final_ratio_change(by_init[init, 0.0], by_init[init, 1.0], column)
            if change.values:
                gamma_change[init, name] = change
    return Decomposition(context, metric, random, align_flip, removed, others, gamma_change, dict(by_init))


def _final(run: Run, column: str) -> float:
    """The column's value in the run's last round that has one (NaN if never measured)."""
    for row in reversed(run.rounds):
        value = row.get(column, math.nan)
        if not math.isnan(value):
            return value
    return math.nan


def _final_ratio_change(low: Group, high: Group, column: str) -> OverSeeds:
    """Final column(h = 1) / column(h = 0) - 1 per seed, where both are measured and column(h = 0) > 0."""
    baseline = low.by_seed()
    values = {}
    for run in high.runs:
        if run.seed in baseline:
            before, after = _final(baseline[run.seed], column), _final(run, column)
            if not (math.isnan(before) or math.isnan(after)) and before > 0:
                values[run.seed] = after / before - 1.0
    return OverSeeds(values)


# --------------------------------------------------------------------------------------------
# Tables


def context_label(decomposition: Decomposition, found: Sequence[Decomposition]) -> str:
    """The settings that tell this context from the others ('τ = 10, 50 rounds'); tau always
    where set; 'all runs' when there is one context without tau."""
    keys = [k for k in sorted(decomposition.context)
            if len({freeze_value(d.context.get(k)) for d in found}) > 1]
    if TAU_KEY in decomposition.context and TAU_KEY not in keys:
        keys.insert(0, TAU_KEY)
    keys.sort(key=lambda k: (k != TAU_KEY, k != "fl.num_rounds", k))
    parts = [format_key_value(k, decomposition.context[k]) for k in keys if decomposition.context.get(k) is not None]
    return ", ".join(parts) or "all runs"


def render_markdown(found: Sequence[Decomposition]) -> str:
    """The summary.md section: the penalty split per context and the signal learning change; '' for none."""
    if not found:
        return ""
    others = sorted({init for d in found for init in d.others}, key=init_rank)
    metric_names = {d.metric for d in found}
    metric = metric_names.pop() if len(metric_names) == 1 else "error"
    lines = ["## Where the heterogeneity penalty lands", "",
             f"Penalty = {metric}(h = 1) - {metric}(h = 0) of the label_skew runs, paired by seed. align_flip starts "
             "from the same random draw with every filter aligned, so penalty(random) - penalty(align_flip) is the "
             "part carried by the filters misaligned at init and penalty(align_flip) the residual: what label skew "
             "does to filters that start aligned. Cells: mean ± std over seeds (seeds with a positive value / "
             "seeds); share removed = mean(removed) / mean(penalty random).", ""]
    headers = ["setting", "seeds", "penalty random", "removed by align_flip (misaligned at init)",
               "residual = penalty align_flip (aligned at init)", "share removed",
               *(f"penalty {init}" for init in others)]
    lines += ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for d in found:
        share = "" if math.isnan(d.share_removed) else f"{100 * d.share_removed:.0f} %"
        cells = [context_label(d, found), str(d.random.n), d.random.text(), d.removed.text(), d.align_flip.text(),
                 share, *(d.others[init].text() if init in d.others else "" for init in others)]
        lines.append("| " + " | ".join(cells) + " |")
    changes = sorted({key for d in found for key in d.gamma_change}, key=lambda k: (init_rank(k[0]), k[1]))
    if changes:
        lines += ["", "Final signal learning γ (mean over the filters of a group) at h = 1 relative to h = 0, "
                  "paired by seed: γ(h = 1) / γ(h = 0) - 1 (seeds with a positive value / seeds).", ""]
        headers = ["setting", *(f"{init}: {name}" for init, name in changes)]
        lines += ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
        for d in found:
            cells = [context_label(d, found)]
            for key in changes:
                change = d.gamma_change.get(key)
                cells.append(_percent_text(change) if change is not None else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent_text(change: OverSeeds) -> str:
    scaled = OverSeeds({seed: 100 * value for seed, value in change.values.items()})
    return scaled.text(decimals=1).replace(" (", " % (", 1)


CSV_COLUMNS = ("setting", "metric", "quantity", "init", "n_seeds", "mean", "std", "seeds_positive")


def render_csv(found: Sequence[Decomposition]) -> str:
    """penalty_decomposition.csv: one row per (context, quantity); repr-exact floats."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for d in found:
        label = context_label(d, found)
        rows = [("penalty", RANDOM, d.random), ("removed_by_align_flip", RANDOM, d.removed),
                ("residual", ALIGN_FLIP, d.align_flip),
                *(("penalty", init, values) for init, values in d.others.items()),
                *((f"gamma_change_{name.replace(' ', '_')}", init, values)
                  for (init, name), values in d.gamma_change.items())]
        for quantity, init, values in rows:
            writer.writerow([label, d.metric, quantity, init, values.n, format_cell(values.mean),
                             format_cell(values.std), values.positive])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Figure


def render_figure(found: Sequence[Decomposition]) -> bytes | None:
    """PNG of figure(found); None when there is no decomposition."""
    figure = make_figure(found)
    return None if figure is None else render_png(figure)


def make_figure(found: Sequence[Decomposition]) -> plt.Figure | None:
    """(a) Signal learning γ over rounds of the filters aligned at init (top row) and misaligned
    at init (second row), a column per context, a line per init (its colour) and h (solid h = 0,
    dashed h = 1), mean with a ± std band over seeds; shared y-axis. (b) Bars per context:
    penalty(random), the part align_flip removes, the residual (= penalty(align_flip)) and the
    other inits' penalties, mean with std error bars and a dot per seed."""
    if not found:
        return None
    columns = len(found)
    with style():
        figure = plt.figure(figsize=(max(7.5, 4.2 * columns + 2.2), 10.0), layout="constrained")
        grid = figure.add_gridspec(3, columns, height_ratios=(1.0, 1.0, 1.15))
        first = figure.add_subplot(grid[0, 0])
        gamma_axes = [[first if (r, c) == (0, 0) else figure.add_subplot(grid[r, c], sharey=first)
                       for c in range(columns)] for r in range(2)]
        for c, d in enumerate(found):
            for r, (name, column) in enumerate(GAMMA_COLUMNS.items()):
                _draw_gamma(gamma_axes[r][c], d, column, name)
                gamma_axes[r][c].set_title(f"(a) {context_label(d, found)}: filters {name}")
                if c == 0:
                    gamma_axes[r][c].set_ylabel("mean signal learning γ")
                if r == 1:
                    gamma_axes[r][c].set_xlabel("round")
        bars = figure.add_subplot(grid[2, :])
        _draw_bars(bars, found)
        _legend(gamma_axes[0][-1], "init, h")
        _legend(bars, None)
        settings = found[0].groups[RANDOM, 0.0].settings
        head = ", ".join(t for t in (settings.get("data.name"), _filters(settings, found[0])) if t)
        seeds = sorted({d.random.n for d in found})
        n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        figure.suptitle(f"{head + ': ' if head else ''}where the heterogeneity penalty lands (label skew h = 1 vs 0)\n"
                        f"γ: signal learned since round 0; mean ± std over seeds (shaded band, error bars), "
                        f"n = {n}; penalty in {found[0].metric}")
    return figure


def _filters(settings: Mapping[str, Any], d: Decomposition) -> str:
    runs = d.groups[RANDOM, 0.0].runs
    return filters_text(settings.get("model.name"), settings.get("data.name"), settings.get("model.filters_per_class"),
                        runs[0].rounds[0] if runs and runs[0].rounds else None)


def _draw_gamma(axis: Any, d: Decomposition, column: str, name: str) -> None:
    inits = sorted({init for init, _ in d.groups}, key=init_rank)
    without = [init for init in inits if not any(_measured(run, column) for h in HS if (init, h) in d.groups
                                                  for run in d.groups[init, h].runs)]
    if without:
        axis.text(0.02, 0.97, f"no filter {name}: {', '.join(without)}", transform=axis.transAxes, ha="left",
                  va="top", fontsize=8, color="0.35")
    for i, init in enumerate(inits):
        for j, h in enumerate(HS):
            group = d.groups.get((init, h))
            if group is None:
                continue
            rounds, means, stds = mean_curve(group.runs, column)
            if not rounds:
                continue  # no filter of this group (align_flip has no misaligned filter at init)
            colour = init_colour(group.settings.get(INIT_KEY))
            every = marker_every(len(rounds), 8)
            axis.plot(rounds, means, color=colour, linestyle=LINE_STYLES[j], marker=MARKERS[i % len(MARKERS)],
                      markersize=4.0, markevery=((i * max(1, every // 3)) % every, every),
                      label=f"{init}, {format_key_value(H_KEY, h)}")
            if len(group.runs) > 1:
                low = [m - s for m, s in zip(means, stds, strict=True)]
                high = [m + s for m, s in zip(means, stds, strict=True)]
                axis.fill_between(rounds, low, high, color=colour, alpha=0.15, linewidth=0)
    integer_ticks(axis, "x")


def _measured(run: Run, column: str) -> bool:
    return any(not math.isnan(row.get(column, math.nan)) for row in run.rounds)


def bar_series(d: Decomposition) -> list[tuple[str, OverSeeds, tuple[float, float, float], str]]:
    """The bars of one context: (label, values, colour, hatch)."""
    series = [("penalty random", d.random, init_colour(RANDOM), ""),
              ("removed by align_flip (misaligned at init)", d.removed, shade(init_colour(RANDOM), 0.55), "//"),
              ("residual = penalty align_flip (aligned at init)", d.align_flip, init_colour(ALIGN_FLIP), "")]
    for init, values in d.others.items():
        series.append((f"penalty {init}", values, init_colour(init.split(",")[0]), ""))
    return series


def _draw_bars(axis: Any, found: Sequence[Decomposition]) -> None:
    labels = list(dict.fromkeys(label for d in found for label, *_ in bar_series(d)))
    width = 0.8 / len(labels)
    for x, d in enumerate(found):
        for label, values, colour, hatch in bar_series(d):
            position = x - 0.4 + width * (labels.index(label) + 0.5)
            std = values.std
            axis.bar([position], [values.mean], width=width, color=[colour], hatch=hatch, edgecolor="black",
                     linewidth=0.5, label=label, yerr=None if math.isnan(std) else [std],
                     error_kw={"elinewidth": 1.0, "capsize": 3})
            dots = list(values.values.values())
            spread = [position + width * 0.3 * ((k % 5) - 2) / 2 for k in range(len(dots))]
            axis.scatter(spread, dots, s=9, color="black", zorder=3, linewidths=0, label=SEED_DOTS)
            if dots:
                top = max([*dots, values.mean + (0.0 if math.isnan(std) else std), 0.0])
                axis.annotate(f"{values.positive}/{values.n}", (position, top), xytext=(0, 3),
                              textcoords="offset points", ha="center", va="bottom", fontsize=8)
    axis.axhline(0.0, color="0.3", linewidth=0.8)
    axis.set_xticks(range(len(found)), [context_label(d, found) for d in found])
    axis.tick_params(axis="x", length=0)
    axis.grid(False, axis="x")
    axis.set_ylabel(f"{found[0].metric}(h = 1) − (h = 0)")
    axis.set_title("(b) penalty split per setting (numbers: seeds with a positive value / seeds)")


def _legend(axis: Any, title: str | None) -> None:
    """One entry per label, right of the axis; the seed dots last."""
    handles, labels = [], []
    for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    if SEED_DOTS in labels:
        index = labels.index(SEED_DOTS)
        handles.append(handles.pop(index))
        labels.append(labels.pop(index))
    if labels:
        axis.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title=title)
