"""Sweep report: summary.csv, summary.md and figures from the results files of many runs.

    python -m initmatters.report <sweep folder> [--out DIR]

Reads only the results contract (summary.json, rounds.csv, config.yaml); no Hydra, no Flower.
Every folder below <sweep folder> (any depth, hidden folders such as .hydra skipped) holding
summary.json and rounds.csv is a finished run; one holding config.yaml but no summary.json is an
unfinished (running, interrupted or failed) run, counted and listed but otherwise ignored.

A configuration is the set of runs whose flattened settings ("section.key", from
summary.json["settings"]) are equal except `seed`. Per configuration the report gives the mean
and the sample standard deviation (n - 1; blank for one seed) over seeds of the final test error
and loss, the misaligned filters at round 0 and at the end, the realised h, and the
heterogeneity penalty: test_error(h) - test_error(h=0) of the label_skew run with the same other
settings and the same seed; for dirichlet and pathological runs, test_error minus that of the iid
run with the same other settings and seed (the IID vs non-IID gap of the paper's practical
experiments); blank where no such partner exists. The partner has no noise or signal skew (the
synthetic task's skews beyond labels), so a skewed run's penalty is against the unskewed run;
where some configuration asks for a skew, the realised skews (summary.json facts) are tabulated
too. Where the final row has pop_test_error (the synthetic task's population test error,
data.population_samples > 0), the same statistics and the penalty are also given for it
(pop_test_error, pop_heterogeneity_penalty), next to the finite-test-set ones.

Where the sweep has random and align_flip label-skew runs at h = 0 and h = 1, summary.md gets a
section on where the heterogeneity penalty lands (initmatters.penalty): the part align_flip
removes and the residual, with penalty_decomposition.csv and figures/penalty_decomposition.png;
other sweeps' output is unchanged.

Everything is computed and rendered first, then written atomically (temporary file + rename)
into --out (default: the sweep folder): summary.csv, summary.md and figures/*.png. A missing or
empty sweep folder, or an --out that cannot be written, is one line on stderr and exit code 2,
with nothing written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import yaml  # noqa: E402

from initmatters import penalty  # noqa: E402
from initmatters.failure import report_failure  # noqa: E402
from initmatters.sweep_common import (  # noqa: E402  (re-exported: report.mean_std etc. stay importable)
    H_KEY,
    HETEROGENEITY_PREFIX,
    INIT_KEY,
    SCHEME_KEY,
    SEED_KEY,
    STEPS_KEY,
    TAU_KEY,
    format_key_value,
    format_mean_std,
    format_setting,
    mean_curve,
    mean_std,
)
from initmatters.sweep_common import freeze as _freeze  # noqa: E402
from initmatters.sweep_common import freeze_value as _freeze_value  # noqa: E402
from initmatters.sweep_common import key_name as _key_name  # noqa: E402
from initmatters.sweep_common import same as _same  # noqa: E402
from initmatters.sweep_common import sort_value as _sort_value  # noqa: E402
from initmatters_core.plots import (  # noqa: E402
    INIT_COLOURS,  # noqa: F401  (re-exported: the report's colours are the per-run plots' colours)
    INIT_ORDER,  # noqa: F401
    LINE_STYLES,
    MARKERS,
    SPARE_COLOURS,  # noqa: F401
    filters_text,
    init_colour,
    init_rank,
    integer_ticks,
    marker_every,
    render_png,
    shade,
    style,
)
from initmatters_core.results import (  # noqa: E402
    CONFIG_FILE,
    ROUNDS_FILE,
    SUMMARY_FILE,
    format_cell,
    read_rounds_csv,
    write_bytes_atomic,
    write_text_atomic,
)
from initmatters_core.settings import flatten_settings  # noqa: E402

FIGURES_DIR = "figures"
# Where a run's numbers are also sent, not what they are: runs that differ only here are one configuration.
TRACKER_KEYS = ("log.tensorboard", "log.wandb", "log.wandb_project")

# Per-configuration statistics: (column stem, markdown header, decimals in summary.md).
METRICS: tuple[tuple[str, str, int], ...] = (
    ("test_error", "final test error", 4),
    ("test_loss", "final test loss", 4),
    ("misaligned_init", "misaligned at round 0", 1),
    ("misaligned_final", "misaligned at end", 1),
    ("realised_h", "realised h", 4),
    ("heterogeneity_penalty", "heterogeneity penalty", 4),
    ("pop_test_error", "final population test error", 4),
    ("pop_heterogeneity_penalty", "population heterogeneity penalty", 4),
)
# Penalty column stem -> the per-run error it is the paired difference of.
PENALTIES = {"heterogeneity_penalty": "test_error", "pop_heterogeneity_penalty": "pop_test_error"}
PER_RUN_METRICS = tuple(stem for stem, _, _ in METRICS if stem not in PENALTIES)
# Shown in summary.md only where some configuration has a value (the synthetic task's population error).
OPTIONAL_METRICS = ("pop_test_error", "pop_heterogeneity_penalty")
# The synthetic task's skews beyond labels: setting -> the realised measure (summary.json facts).
SKEW_KEYS = {"heterogeneity.noise_skew": "realised_noise_skew", "heterogeneity.signal_skew": "realised_signal_skew"}
# Their statistics, in summary.csv and summary.md (after realised h) only where some configuration asks for a skew.
SKEW_METRICS: tuple[tuple[str, str, int], ...] = (
    ("realised_noise_skew", "realised noise skew", 4),
    ("realised_signal_skew", "realised signal skew", 4),
)

FIGURE_FILES = {
    "test_error_vs_h": "test_error_vs_h.png",
    "misaligned_vs_round": "misaligned_vs_round.png",
    "pretraining_steps": "pretraining_steps.png",
    "init_variants": "init_variants.png",
}


class ReportError(Exception):
    """The report cannot be made; the message is one line."""


@dataclass(frozen=True)
class Run:
    """One finished run: its flattened settings, rounds.csv rows and headline metrics."""

    path: Path
    settings: dict[str, Any]  # flattened "section.key" -> value, including "seed"
    rounds: list[dict[str, float]]
    test_error: float
    test_loss: float
    pop_test_error: float  # NaN where the run did not measure it
    misaligned_init: float
    misaligned_final: float
    realised_h: float
    wall_time_s: float
    realised_noise_skew: float = math.nan  # summary.json facts (synthetic task); NaN where not recorded
    realised_signal_skew: float = math.nan

    @property
    def seed(self) -> Any:
        return self.settings.get(SEED_KEY)

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class Unfinished:
    """A folder with config.yaml but no complete results (running, interrupted or failed)."""

    path: Path
    reason: str
    settings: dict[str, Any] = field(default_factory=dict)  # flattened config.yaml, if readable


@dataclass
class Group:
    """One configuration: runs with equal settings except the seed (and the trackers), sorted by seed."""

    settings: dict[str, Any]  # flattened, without "seed"
    runs: list[Run]
    duplicates: list[Path] = field(default_factory=list)  # same settings and seed, ignored

    @property
    def key(self) -> tuple:
        return _freeze(self.settings)

    def by_seed(self) -> dict[Any, Run]:
        return {run.seed: run for run in self.runs}


# --------------------------------------------------------------------------------------------
# Loading


def scan_sweep(folder: Path) -> tuple[list[Run], list[Unfinished]]:
    """(finished runs, unfinished runs) under `folder`, both sorted by path."""
    folder = Path(folder)
    if not folder.exists():
        raise ReportError(f"{folder} does not exist: give a sweep folder (one holding run folders)")
    if not folder.is_dir():
        raise ReportError(f"{folder} is a file: give a sweep folder (one holding run folders)")
    runs: list[Run] = []
    unfinished: list[Unfinished] = []
    for directory in _walk(folder):
        names = {p.name for p in directory.iterdir() if p.is_file()}
        has_summary, has_rounds = SUMMARY_FILE in names, ROUNDS_FILE in names
        if has_summary and has_rounds:
            try:
                runs.append(_load_run(directory))
            except (OSError, ValueError, KeyError, TypeError) as error:
                unfinished.append(Unfinished(directory, f"unreadable results: {_one_line(error)}",
                                             _config_settings(directory)))
        elif has_summary or CONFIG_FILE in names:
            reason = "summary.json without rounds.csv" if has_summary else "no summary.json"
            unfinished.append(Unfinished(directory, reason, _config_settings(directory)))
    return runs, unfinished


def load_runs(folder: Path) -> list[Run]:
    """Every finished run (a folder with summary.json and rounds.csv) under `folder`, any depth."""
    return scan_sweep(folder)[0]


def find_unfinished(folder: Path) -> list[Unfinished]:
    """Every folder under `folder` with config.yaml but no complete results."""
    return scan_sweep(folder)[1]


def _walk(folder: Path) -> Iterable[Path]:
    for root, dirs, _ in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(root)


def _load_run(directory: Path) -> Run:
    summary = json.loads((directory / SUMMARY_FILE).read_text(encoding="utf-8"))
    if not isinstance(summary, Mapping) or not isinstance(summary.get("settings"), Mapping):
        raise ValueError("summary.json has no settings")
    rounds = read_rounds_csv(directory / ROUNDS_FILE)
    final = summary.get("final") or (rounds[-1] if rounds else {})
    first = next((row for row in rounds if row.get("round") == 0), None)
    misaligned_init = first["misaligned"] if first is not None else summary.get("initial_misaligned")
    facts = summary.get("facts") if isinstance(summary.get("facts"), Mapping) else {}
    return Run(
        path=directory,
        settings=flatten_settings(summary["settings"]),
        rounds=rounds,
        test_error=_number(final.get("test_error")),
        test_loss=_number(final.get("test_loss")),
        pop_test_error=_number(final.get("pop_test_error")),
        misaligned_init=_number(misaligned_init),
        misaligned_final=_number(final.get("misaligned")),
        realised_h=_number(summary.get("realised_h")),
        wall_time_s=_number(summary.get("wall_time_s")),
        **{stem: _number(facts.get(stem)) for stem, _, _ in SKEW_METRICS},
    )


def _config_settings(directory: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return flatten_settings(loaded) if isinstance(loaded, Mapping) else {}


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


# --------------------------------------------------------------------------------------------
# Grouping and statistics


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Configurations (equal settings except seed and the trackers); a second run with the same
    settings and seed is kept out of the statistics and listed in Group.duplicates. Groups are in
    first-seen order."""
    groups: dict[tuple, Group] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        settings = {k: v for k, v in run.settings.items() if k != SEED_KEY and k not in TRACKER_KEYS}
        group = groups.setdefault(_freeze(settings), Group(settings, []))
        if any(_same(existing.seed, run.seed) for existing in group.runs):
            group.duplicates.append(run.path)
        else:
            group.runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: _sort_value(r.seed))
    return list(groups.values())


def varying_keys(groups: Sequence[Group]) -> list[str]:
    """Settings keys that vary across configurations, in reading order (init, heterogeneity, fl,
    the rest). A key that is set for some configurations and None for others (init.steps with
    init=random,pretrained) counts only if it takes two or more distinct set values, unless it is
    needed to tell configurations apart."""
    all_keys = sorted({k for g in groups for k in g.settings}, key=_key_order)
    distinct = {k: {_freeze_value(g.settings.get(k)) for g in groups} for k in all_keys}
    keys = [k for k in all_keys if len(distinct[k] - {None}) >= 2]
    for extra in (k for k in all_keys if len(distinct[k]) >= 2 and k not in keys):
        if len({_freeze({k: g.settings.get(k) for k in keys}) for g in groups}) == len(groups):
            break
        keys.append(extra)
    return sorted(keys, key=_key_order)


def summarize(groups: Sequence[Group], keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per configuration, sorted by `keys` (default: varying_keys(groups)).

    Row keys: each of `keys` (the setting's value), n_seeds, seeds ("0 1 2"), for each metric
    stem in METRICS `<stem>_mean` and `<stem>_std` (NaN when undefined), and for each penalty
    `<stem>_n` (how many seeds had an h=0 partner)."""
    keys = list(varying_keys(groups) if keys is None else keys)
    index = {group.key: group for group in groups}
    rows = []
    for group in sorted(groups, key=lambda g: tuple(_sort_value(g.settings.get(k)) for k in keys)):
        row: dict[str, Any] = {k: group.settings.get(k) for k in keys}
        row["n_seeds"] = len(group.runs)
        row["seeds"] = " ".join(str(run.seed) for run in group.runs)
        for stem in (*PER_RUN_METRICS, *(stem for stem, _, _ in SKEW_METRICS)):
            row[f"{stem}_mean"], row[f"{stem}_std"] = mean_std([run.metric(stem) for run in group.runs])
        for stem, metric in PENALTIES.items():
            penalties = heterogeneity_penalties(group, index, metric)
            row[f"{stem}_mean"], row[f"{stem}_std"] = mean_std(penalties)
            row[f"{stem}_n"] = len(penalties)
        rows.append(row)
    return rows


def heterogeneity_penalties(group: Group, index: Mapping[tuple, Group], metric: str = "test_error") -> list[float]:
    """`metric` (a per-run error) minus the partner's per seed: the label_skew h=0 configuration
    with the same other settings (label_skew), or the iid one (dirichlet, pathological), in both
    cases without noise or signal skew; empty without one or where either value is missing."""
    scheme = group.settings.get(SCHEME_KEY)
    unskewed = {k: 0.0 for k in SKEW_KEYS if k in group.settings}  # summaries older than the skews lack them
    if scheme == "label_skew" and group.settings.get(H_KEY) is not None:
        partner = index.get(_freeze({**group.settings, H_KEY: 0.0, **unskewed}))
    elif scheme in ("dirichlet", "pathological"):
        # iid has no label options
        unset = {k: None for k in group.settings if k.startswith(HETEROGENEITY_PREFIX) and k not in SKEW_KEYS}
        partner = index.get(_freeze({**group.settings, **unset, SCHEME_KEY: "iid", **unskewed}))
    else:
        return []
    if partner is None:
        return []
    baseline = partner.by_seed()
    gaps = [run.metric(metric) - baseline[run.seed].metric(metric) for run in group.runs if run.seed in baseline]
    return [gap for gap in gaps if not math.isnan(gap)]


# --------------------------------------------------------------------------------------------
# Tables


def table_metrics(skewed: bool = False) -> tuple[tuple[str, str, int], ...]:
    """METRICS, with SKEW_METRICS after realised h when `skewed` (some configuration asks for a skew)."""
    if not skewed:
        return METRICS
    after = [stem for stem, _, _ in METRICS].index("realised_h") + 1
    return (*METRICS[:after], *SKEW_METRICS, *METRICS[after:])


def asks_for_skew(groups: Sequence[Group]) -> bool:
    """Whether some configuration has a nonzero heterogeneity.noise_skew or signal_skew."""
    return any(group.settings.get(key) for group in groups for key in SKEW_KEYS)


def summary_columns(keys: Sequence[str], skewed: bool = False) -> list[str]:
    columns = [*keys, "n_seeds", "seeds"]
    for stem, _, _ in table_metrics(skewed):
        columns += [f"{stem}_mean", f"{stem}_std"]
    return [*columns, *(f"{stem}_n" for stem in PENALTIES)]


def render_csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], skewed: bool = False) -> str:
    """summary.csv text: blank cells for missing/NaN, repr-exact floats; the realised skews' columns
    when `skewed`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = summary_columns(keys, skewed)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def render_markdown(rows: Sequence[Mapping[str, Any]], keys: Sequence[str],
                    unfinished: Sequence[Unfinished] = (), *, title: str = "Sweep summary",
                    source: str = "", n_runs: int | None = None,
                    figures: Sequence[str] = (), notes: Sequence[str] = (), skewed: bool = False,
                    sections: Sequence[str] = ()) -> str:
    """summary.md: the per-configuration table (mean ± std over seeds), unfinished runs, further
    `sections` (markdown, each with its own heading), figures; the realised skews' columns when `skewed`."""
    n_runs = sum(int(row["n_seeds"]) for row in rows) if n_runs is None else n_runs
    lines = [f"# {title}", ""]
    where = f" in `{source}`" if source else ""
    lines += [f"{n_runs} finished runs{where}, {len(rows)} configurations; "
              "cells are mean ± std over seeds (sample std, n - 1; the mean alone for one seed).", ""]
    metrics = [metric for metric in table_metrics(skewed) if metric[0] not in OPTIONAL_METRICS
               or any(not math.isnan(row.get(f"{metric[0]}_mean", math.nan)) for row in rows)]
    headers = [*keys, "n_seeds", *(header for _, header, _ in metrics)]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("| " + " | ".join("---" for _ in headers) + " |")
    for row in rows:
        cells = [format_setting(row.get(k)) for k in keys] + [str(row["n_seeds"])]
        for stem, _, decimals in metrics:
            cells.append(format_mean_std(row.get(f"{stem}_mean", math.nan), row.get(f"{stem}_std", math.nan),
                                         decimals, signed=stem in PENALTIES))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Heterogeneity penalty: test_error(h) - test_error(h=0) of the label_skew run with "
              "the same other settings and seed (dirichlet/pathological: minus the iid run's), over the "
              "seeds that have such a partner; blank without a partner."]
    if skewed:
        lines.append("Noise and signal skew (synthetic task): the partner has no skew either, so the penalty of a "
                     "skewed run is against the h=0, unskewed run. Realised noise (signal) skew: std over clients "
                     "of log(measured noise level / sigma_p) (log(measured signal norm / ||mu||)) of the data the "
                     "clients trained on.")
    if any(metric[0] in OPTIONAL_METRICS for metric in metrics):
        lines.append("Population test error: the synthetic task's pop_test_error (clean labels, Monte-Carlo "
                     "estimate of the population value, data.population_samples); its penalty is paired "
                     "the same way.")
    lines.append("")
    lines += [*notes, ""] if notes else []
    lines.append(unfinished_line(unfinished, keys))
    for section in sections:
        lines += ["", section.rstrip("\n")]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def unfinished_line(unfinished: Sequence[Unfinished], keys: Sequence[str] = ()) -> str:
    if not unfinished:
        return "Unfinished runs: none."
    described = []
    for item in unfinished:
        shown = [k for k in [*keys, SEED_KEY] if k in item.settings]
        detail = ", ".join([f"{k}={format_setting(item.settings[k])}" for k in shown] + [item.reason])
        described.append(f"`{item.path}` ({detail})")
    return f"Unfinished runs ({len(unfinished)}, not in the table): " + "; ".join(described) + "."


# --------------------------------------------------------------------------------------------
# Figures
#
# Conventions (initmatters_core.plots): one colour per init (INIT_COLOURS), variants of an init
# in lighter shades of it; inits in INIT_ORDER; panels that compare one metric share the y-axis;
# a legend names only the settings that change inside a panel (a key that is constant in every
# panel, such as num_rounds = 500 / tau next to tau, goes to the panel title); error bars and bands
# are the sample std over seeds, drawn only where a point has two or more seeds; titles name the
# dataset, the seeds (n) and, for the misaligned-filter figures, the filter count.

AXIS_NAMES = {"model.init_std": "init std σ₀ (model.init_std)", STEPS_KEY: "pre-training steps (init.steps)"}
MISALIGNED = "misaligned"


def render_figures(groups: Sequence[Group], keys: Sequence[str]) -> dict[str, bytes | None]:
    """PNG bytes of every figure of this report by file name; None for a figure whose keys do not vary."""
    makers: dict[str, Callable[[Sequence[Group], Sequence[str]], plt.Figure | None]] = {
        "test_error_vs_h": figure_test_error_vs_h,
        "misaligned_vs_round": figure_misaligned_vs_round,
        "pretraining_steps": figure_pretraining_steps,
        "init_variants": figure_init_variants,
    }
    rendered: dict[str, bytes | None] = {}
    for name, maker in makers.items():
        figure = maker(groups, keys)
        rendered[FIGURE_FILES[name]] = None if figure is None else render_png(figure)
    return rendered


def write_figures(rendered: Mapping[str, bytes | None], figures_dir: Path) -> list[Path]:
    """Write the rendered figures; remove this report's stale ones (None); return written paths."""
    written = []
    for name, png in rendered.items():
        path = figures_dir / name
        if png is None:
            path.unlink(missing_ok=True)
            continue
        write_bytes_atomic(path, png)
        written.append(path)
    return written


def make_figures(groups: Sequence[Group], keys: Sequence[str], figures_dir: Path) -> list[Path]:
    """Write the figures whose keys vary; remove this report's stale ones; return written paths."""
    return write_figures(render_figures(groups, keys), figures_dir)


def figure_test_error_vs_h(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Final test error vs label_skew h, a line per init (and other settings), a panel per tau
    (shared y-axis); error bars: std over seeds."""
    skew = [g for g in groups if g.settings.get(SCHEME_KEY) == "label_skew" and g.settings.get(H_KEY) is not None]
    if len({g.settings[H_KEY] for g in skew}) < 2:
        return None
    panel_keys = [TAU_KEY] if TAU_KEY in keys else []
    panels = _partition(skew, panel_keys)
    line_keys, covarying = _split_covarying(panels, [k for k in keys if k not in (H_KEY, SCHEME_KEY, TAU_KEY)])
    colours = line_colours(skew, line_keys)
    markers = _markers(_partition(skew, line_keys))
    hs = sorted({g.settings[H_KEY] for g in skew})
    with style():
        figure, axes = _panels(len(panels), sharey=True)
        for axis, members in zip(axes, panels.values(), strict=False):
            for line_label, line in _partition(members, line_keys).items():
                line.sort(key=lambda g: g.settings[H_KEY])
                means, stds = _stats(line, "test_error")
                axis.errorbar([g.settings[H_KEY] for g in line], means, yerr=_yerr(stds), marker=markers[line_label],
                              label=line_label or "runs", color=colours[line_label])
            axis.set_title(_label(members[0], [*panel_keys, *covarying]))
            axis.set_xlabel("label skew h")
            axis.set_xticks(hs, [format_setting(h) for h in hs])
        _label_first_column(axes, "final test error")
        _figure_legend(figure, axes)
        _suptitle(figure, "final test error vs label skew h", skew, [*panel_keys, *covarying, *line_keys, H_KEY],
                  spread="error bars")
    return figure


def figure_misaligned_vs_round(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Misaligned filters vs round, mean over seeds with a ± std band (clipped at 0; none for one
    seed): colour = init (variants lighter), line style and marker = heterogeneity (or, without a
    heterogeneity setting, the variant of the init); a panel per value of the other varying
    settings (shared y-axis)."""
    init_keys, het_keys = _init_keys(keys), _het_keys(keys)
    if len(groups) < 2 or not (init_keys or het_keys):
        return None
    if not any(_measured(run, MISALIGNED) for g in groups for run in g.runs):
        return None  # a model without the filter alignment (resnet18)
    panel_keys = [k for k in keys if k not in init_keys and k not in het_keys]
    panels = _partition(groups, panel_keys)
    init_keys, init_covarying = _split_covarying(panels, init_keys)
    het_keys, het_covarying = _split_covarying(panels, het_keys)
    covarying = [*init_covarying, *het_covarying]
    colours = line_colours(groups, init_keys)
    lines = _partition(groups, [*init_keys, *het_keys])
    order = list(lines)
    if het_keys:  # line style and marker tell the heterogeneity apart
        hets = list(_partition(groups, het_keys))
        style_of = {label: hets.index(_label(members[0], het_keys)) for label, members in lines.items()}
    else:  # the variants of one init: its 1st, 2nd, ... variant
        seen: dict[Any, int] = {}
        style_of = {}
        for label, members in lines.items():
            init = members[0].settings.get(INIT_KEY)
            style_of[label] = seen[init] = seen.get(init, -1) + 1
    with style():
        figure, axes = _panels(len(panels), sharey=True, width=5.0)
        for axis, members in zip(axes, panels.values(), strict=False):
            for group in sorted(members, key=lambda g: order.index(_label(g, [*init_keys, *het_keys]))):
                label = _label(group, [*init_keys, *het_keys])
                rounds, means, stds = mean_curve(group.runs, MISALIGNED)
                colour, index = colours[_label(group, init_keys)], style_of[label]
                every = marker_every(len(rounds), 10)
                axis.plot(rounds, means, color=colour, linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                          marker=MARKERS[index % len(MARKERS)], markersize=4.5, label=label,
                          markevery=((order.index(label) * max(1, every // 3)) % every, every))
                if len(group.runs) > 1:
                    low = [max(0.0, m - s) for m, s in zip(means, stds, strict=True)]
                    high = [m + s for m, s in zip(means, stds, strict=True)]
                    axis.fill_between(rounds, low, high, color=colour, alpha=0.15, linewidth=0)
            axis.set_title(_label(members[0], [*panel_keys, *covarying]))
            axis.set_xlabel("round")
            integer_ticks(axis, "x")
        integer_ticks(axes[0], "y")
        axes[0].set_ylim(bottom=min(0.0, axes[0].get_ylim()[0]))
        _label_first_column(axes, "misaligned filters")
        _figure_legend(figure, axes)
        _suptitle(figure, "misaligned filters over rounds", groups, [*panel_keys, *covarying, *init_keys, *het_keys],
                  spread="shaded band", filters=True)
    return figure


def figure_pretraining_steps(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Among init=pretrained: pre-training steps vs misaligned filters at round 0 and vs final test error."""
    pretrained = [g for g in groups
                  if g.settings.get(INIT_KEY) == "pretrained" and g.settings.get(STEPS_KEY) is not None]
    if len({g.settings[STEPS_KEY] for g in pretrained}) < 2:
        return None
    line_keys, _ = _split_covarying({"": pretrained}, [k for k in keys if k not in (STEPS_KEY, INIT_KEY)])
    colours = line_colours(pretrained, line_keys)
    markers = _markers(_partition(pretrained, line_keys))
    steps_all = sorted({g.settings[STEPS_KEY] for g in pretrained})
    with style():
        figure, axes = _panels(2, sharey=False)
        for line_label, line in _partition(pretrained, line_keys).items():
            line.sort(key=lambda g: g.settings[STEPS_KEY])
            steps = [g.settings[STEPS_KEY] for g in line]
            for axis, metric in zip(axes, ("misaligned_init", "test_error"), strict=True):
                means, stds = _stats(line, metric)
                axis.errorbar(steps, means, yerr=_yerr(stds), marker=markers[line_label],
                              label=line_label or "pretrained", color=colours[line_label])
        positive = [s for s in steps_all if s > 0]
        for axis in axes:
            if positive and max(positive) / min(positive) >= 20:  # 0, 1, 2, 5, ..., 50: spread the small ones
                axis.set_xscale("symlog", linthresh=1.0, linscale=0.5)
                axis.set_xticks(steps_all, [format_setting(s) for s in steps_all])
                axis.xaxis.set_minor_locator(plt.NullLocator())
            else:
                integer_ticks(axis, "x")
            axis.set_xlabel(AXIS_NAMES[STEPS_KEY])
        axes[0].set_ylabel("misaligned filters at round 0")
        integer_ticks(axes[0], "y")
        axes[1].set_ylabel("final test error")
        axes[0].set_title("misaligned filters at round 0")
        axes[1].set_title("final test error")
        _figure_legend(figure, axes)
        _suptitle(figure, "pre-training length", pretrained, [*line_keys, STEPS_KEY, INIT_KEY],
                  spread="error bars", filters=True)
    return figure


def figure_init_variants(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Bar chart of the final test error per initialization variant, in the init's colour (variants
    in lighter shades of it), inits in INIT_ORDER. Without other varying settings the bars are
    grouped by init with the variant's value on the tick; otherwise a group of bars per value of
    the other settings, the variants named in the legend. Error bars: std over seeds."""
    init_keys = _init_keys(keys)
    variants = _partition(groups, init_keys)
    if len(variants) < 2:
        return None
    colours = line_colours(groups, init_keys)
    other_keys = _reduce_keys(groups, [k for k in keys if k not in init_keys])
    with style():
        if not other_keys:
            figure = _init_bars_by_init(groups, init_keys, variants, colours)
        else:
            figure = _init_bars_by_setting(groups, init_keys, other_keys, variants, colours)
        _suptitle(figure, "final test error per initialization", groups, [*init_keys, *other_keys],
                  spread="error bars")
    return figure


def _init_bars_by_init(groups: Sequence[Group], init_keys: Sequence[str], variants: Mapping[str, list[Group]],
                       colours: Mapping[str, Any]) -> plt.Figure:
    """A group of bars per init (INIT_ORDER), a bar per variant with its value on the tick."""
    by_init: dict[Any, list[tuple[str, Group]]] = {}
    for label, members in variants.items():
        by_init.setdefault(members[0].settings.get(INIT_KEY), []).append((label, members[0]))
    variant_keys = {init: _split_covarying({"": [g for _, g in bars]}, [k for k in init_keys if k != INIT_KEY])[0]
                    for init, bars in by_init.items()}
    shared = {tuple(v) for v in variant_keys.values() if v}
    value_only = len(shared) == 1 and len(next(iter(shared))) == 1  # one variant key for all: ticks show values
    if not any(variant_keys.values()):  # one bar per init: its name on the tick
        return _plain_init_bars(list(by_init), [bars[0] for bars in by_init.values()], colours)
    positions, ticks, centres = [], [], []
    x = 0.0
    for init, bars in by_init.items():
        start = x
        for _, group in bars:
            positions.append(x)
            keys_here = variant_keys[init]
            ticks.append(format_setting(group.settings.get(keys_here[0])) if value_only and keys_here
                         else _label(group, keys_here))
            x += 1.0
        centres.append((start + x - 1.0) / 2)
        x += 0.6  # gap between inits
    figure, axis = plt.subplots(figsize=(max(4.5, 0.55 * len(positions) + 2.0), 3.6), layout="constrained")
    flat = [(label, group) for bars in by_init.values() for label, group in bars]
    for position, (label, group) in zip(positions, flat, strict=True):
        mean, std = mean_std(run.test_error for run in group.runs)
        axis.bar([position], [mean], width=0.8, yerr=_yerr([std]), color=[colours[label]], edgecolor="black",
                 linewidth=0.5, label=label, error_kw={"elinewidth": 1.0, "capsize": 3})
    axis.set_xticks(positions, ticks)
    axis.tick_params(axis="x", length=0)
    axis.grid(False, axis="x")
    inits = axis.secondary_xaxis("bottom")
    inits.set_xticks(centres, [f"\n\n{format_setting(init)}" for init in by_init])
    inits.tick_params(length=0)
    inits.spines["bottom"].set_visible(False)
    for text in inits.get_xticklabels():
        text.set_fontweight("bold")
    if value_only:
        inits.set_xlabel(AXIS_NAMES.get(next(iter(shared))[0], _key_name(next(iter(shared))[0])) + " per init")
    axis.set_ylabel("final test error")
    return figure


def _plain_init_bars(inits: Sequence[Any], bars: Sequence[tuple[str, Group]], colours: Mapping[str, Any]) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(max(4.0, 0.9 * len(inits) + 2.0), 3.6), layout="constrained")
    for x, (label, group) in enumerate(bars):
        mean, std = mean_std(run.test_error for run in group.runs)
        axis.bar([x], [mean], width=0.7, yerr=_yerr([std]), color=[colours[label]], edgecolor="black",
                 linewidth=0.5, label=label, error_kw={"elinewidth": 1.0, "capsize": 3})
    axis.set_xticks(range(len(inits)), [format_setting(init) for init in inits])
    axis.tick_params(axis="x", length=0)
    axis.grid(False, axis="x")
    axis.set_ylabel("final test error")
    return figure


def _init_bars_by_setting(groups: Sequence[Group], init_keys: Sequence[str], other_keys: Sequence[str],
                          variants: Mapping[str, list[Group]], colours: Mapping[str, Any]) -> plt.Figure:
    """A group of bars per value of the other settings, a bar per init variant (legend)."""
    clusters = _partition(groups, other_keys)
    width = 0.8 / len(variants)
    figure, axis = plt.subplots(figsize=(max(5.5, 0.3 * len(clusters) * len(variants) + 3.5), 3.6),
                                layout="constrained")
    for i, (variant, members) in enumerate(variants.items()):
        xs, means, stds = [], [], []
        for x, label in enumerate(clusters):
            match = [g for g in members if _label(g, other_keys) == label]
            if match:
                mean, std = mean_std(run.test_error for run in match[0].runs)
                xs.append(x - 0.4 + width * (i + 0.5))
                means.append(mean)
                stds.append(std)
        axis.bar(xs, means, width=width, yerr=_yerr(stds), color=colours[variant], edgecolor="black",
                 linewidth=0.5, label=variant, error_kw={"elinewidth": 1.0, "capsize": 2})
    inches_per_group = (figure.get_figwidth() - 3.0) / len(clusters)  # less the y label and the legend
    crowded = max(len(label) for label in clusters) > 11 * inches_per_group  # ~13 characters per inch at 9 pt
    axis.set_xticks(range(len(clusters)), list(clusters), rotation=25 if crowded else 0,
                    ha="right" if crowded else "center", rotation_mode="anchor")
    axis.tick_params(axis="x", length=0)
    axis.grid(False, axis="x")
    axis.set_ylabel("final test error")
    _figure_legend(figure, [axis], title="initialization")
    return figure


def line_colours(groups: Sequence[Group], keys: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """Colour of each line of a figure (groups split by `keys`, labelled by _label): its init's
    colour, the 1st variant of an init as is and further variants of it lighter."""
    variants: dict[Any, list[str]] = {}
    for label, members in _partition(groups, keys).items():
        variants.setdefault(members[0].settings.get(INIT_KEY), []).append(label)
    colours = {}
    for init, labels in variants.items():
        base = init_colour(init)
        for i, label in enumerate(labels):
            colours[label] = shade(base, 0.6 * i / len(labels))  # at most 60 % white: still the init's hue
    return colours


def _init_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k.startswith("init.") or k == "model.init_std"]


def _het_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k.startswith("heterogeneity.")]


def _label(group: Group, keys: Sequence[str]) -> str:
    """'pretrained, 50 pre-training steps' for keys (init.name, init.steps); names show as their
    value, unset (None) settings are left out."""
    return ", ".join(format_key_value(key, group.settings[key]) for key in keys
                     if group.settings.get(key) is not None)


SCHEME_ORDER = ("iid", "label_skew", "dirichlet", "pathological")  # roughly increasing heterogeneity


def _order_value(key: str, value: Any) -> tuple:
    """Sort key of one setting in figures: inits in INIT_ORDER, heterogeneity from IID to the most
    skewed (Dirichlet alpha decreasing), everything else by value."""
    if key == INIT_KEY:
        return init_rank(value)
    if key == SCHEME_KEY and value in SCHEME_ORDER:
        return (SCHEME_ORDER.index(value), "")
    if key == "heterogeneity.alpha" and isinstance(value, int | float) and not isinstance(value, bool):
        return (0, -float(value))
    return _sort_value(value)


def _group_order(group: Group, keys: Sequence[str]) -> tuple:
    return tuple(_order_value(k, group.settings.get(k)) for k in keys)


def _partition(groups: Iterable[Group], keys: Sequence[str]) -> dict[str, list[Group]]:
    """Groups split by their values of `keys`, ordered by those values (init.name in INIT_ORDER),
    labelled by _label."""
    parts: dict[str, list[Group]] = {}
    for group in sorted(groups, key=lambda g: _group_order(g, keys)):
        parts.setdefault(_label(group, keys), []).append(group)
    return parts


def _values(groups: Iterable[Group], key: str) -> set:
    return {_freeze_value(g.settings.get(key)) for g in groups}


def _split_covarying(panels: Mapping[str, Sequence[Group]], keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """(keys that take two or more values inside some panel: for legends, keys that are constant
    inside every panel but differ between panels: determined by the panel, for its title)."""
    inside, covarying = [], []
    for key in keys:
        if any(len(_values(members, key)) > 1 for members in panels.values()):
            inside.append(key)
        elif len(_values([g for members in panels.values() for g in members], key)) > 1:
            covarying.append(key)
    return inside, covarying


def _reduce_keys(groups: Sequence[Group], keys: Sequence[str]) -> list[str]:
    """`keys` less those (last first) whose value follows from the remaining ones (num_rounds =
    500 / tau) or that are constant over `groups`; a key stays where without it a group would have
    no set value left to label it by (iid next to dirichlet, alpha)."""
    kept = [k for k in keys if len(_values(groups, k)) > 1]
    for key in reversed(list(kept)):
        rest = [k for k in kept if k != key]
        mapping: dict[tuple, set] = {}
        for group in groups:
            mapping.setdefault(tuple(_freeze_value(group.settings.get(k)) for k in rest), set()).add(
                _freeze_value(group.settings.get(key)))
        labelled = all(any(group.settings.get(k) is not None for k in rest) for group in groups)
        if rest and labelled and all(len(values) == 1 for values in mapping.values()):
            kept.remove(key)
    return kept


def _measured(run: Run, column: str) -> bool:
    return any(not math.isnan(row.get(column, math.nan)) for row in run.rounds)


def _stats(line: Sequence[Group], metric: str) -> tuple[list[float], list[float]]:
    stats = [mean_std(run.metric(metric) for run in g.runs) for g in line]
    return [m for m, _ in stats], [s for _, s in stats]


def _yerr(stds: Sequence[float]) -> list[float] | None:
    """Error bar half-heights: the std where a point has two or more seeds (NaN: no bar); None
    when no point has."""
    return None if all(math.isnan(s) for s in stds) else list(stds)


def _markers(lines: Mapping[str, Any]) -> dict[str, str]:
    return dict(zip(lines, cycle(MARKERS), strict=False))


def _panels(count: int, sharey: bool, width: float = 4.2) -> tuple[plt.Figure, list[Any]]:
    columns = 2 if count == 4 else min(3, max(1, count))  # 4 panels: 2 x 2
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns + 1.6, 3.3 * rows + 0.6), squeeze=False,
                                sharey=sharey, layout="constrained")
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def _label_first_column(axes: Sequence[Any], ylabel: str) -> None:
    columns = axes[0].get_gridspec().ncols if axes else 1
    for i, axis in enumerate(axes):
        if i % columns == 0:
            axis.set_ylabel(ylabel)


def _figure_legend(figure: plt.Figure, axes: Sequence[Any], title: str | None = None) -> None:
    """One legend for all panels, outside the data area: right of the top-right panel; none for a
    single line."""
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if len(labels) < 2:
        return
    columns = axes[0].get_gridspec().ncols
    anchor = axes[min(len(axes), columns) - 1]
    anchor.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0, title=title,
                  ncol=1 if len(labels) <= 16 else 2)


def _heterogeneity_text(settings: Mapping[str, Any]) -> str:
    scheme = settings.get(SCHEME_KEY)
    text = format_key_value(SCHEME_KEY, scheme) if scheme is not None else ""
    for key in (H_KEY, "heterogeneity.alpha", "heterogeneity.classes_per_client"):
        if settings.get(key) is not None:
            text += f" {format_key_value(key, settings[key])}" if key != "heterogeneity.classes_per_client" else \
                f", {format_key_value(key, settings[key])}"
    for key in SKEW_KEYS:
        if settings.get(key):
            text += f", {format_key_value(key, settings[key])}"
    return text.strip()


def _context(groups: Sequence[Group], shown: Sequence[str]) -> list[str]:
    """The settings every group of a figure shares and that no panel, line or axis shows:
    heterogeneity, local steps (or epochs) and rounds."""
    parts = []
    het = [SCHEME_KEY, H_KEY, "heterogeneity.alpha", "heterogeneity.classes_per_client", *SKEW_KEYS]
    if not any(k in shown for k in het) and all(len(_values(groups, k)) == 1 for k in het):
        text = _heterogeneity_text(groups[0].settings)
        if text:
            parts.append(text)
    epochs = groups[0].settings.get("fl.local_epochs")
    local = "fl.local_epochs" if isinstance(epochs, int) and epochs > 0 else TAU_KEY
    for key in (local, "fl.num_rounds"):
        if key not in shown and len(_values(groups, key)) == 1 and groups[0].settings.get(key) is not None:
            parts.append(format_key_value(key, groups[0].settings[key]))
    return parts


def _filters_text(groups: Sequence[Group]) -> str:
    """'2m = 40 filters' (two-layer CNN of the synthetic task) or 'C·m = 10·10 = 100 filters'
    (patch_cnn); '' when the count differs between the groups or is unknown."""
    texts = {filters_text(g.settings.get("model.name"), g.settings.get("data.name"),
                          g.settings.get("model.filters_per_class"),
                          g.runs[0].rounds[0] if g.runs and g.runs[0].rounds else None) for g in groups}
    return texts.pop() if len(texts) == 1 else ""


def _seeds_text(groups: Sequence[Group], spread: str) -> str:
    """'mean ± std over seeds (error bars), n = 3'; 'single seed (n = 1)' without error bars."""
    counts = sorted({len(g.runs) for g in groups})
    if counts[-1] < 2:
        return "single seed (n = 1)"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    note = "" if counts[0] > 1 else f"; no {spread} where n = 1"
    return f"mean ± std over seeds ({spread}), n = {n}{note}"


def _suptitle(figure: plt.Figure, what: str, groups: Sequence[Group], shown: Sequence[str], spread: str,
              filters: bool = False) -> None:
    """Two lines: '<dataset>, <filters>: <what>' and the shared settings with the seeds (n)."""
    datasets = sorted({str(g.settings["data.name"]) for g in groups if g.settings.get("data.name") is not None})
    head = [", ".join(datasets)] if datasets else []
    if filters:
        head += [t for t in [_filters_text(groups)] if t]
    first = f"{', '.join(head)}: {what}" if head else what
    second = "; ".join([*_context(groups, shown), _seeds_text(groups, spread)])
    figure.suptitle(f"{first}\n{second}")


_SECTION_ORDER = ("init", "model", "heterogeneity", "fl", "data", "log")
_FIRST_KEYS = (INIT_KEY, SCHEME_KEY, H_KEY, TAU_KEY)


def _key_order(key: str) -> tuple:
    section = key.split(".", 1)[0]
    rank = _SECTION_ORDER.index(section) if section in _SECTION_ORDER else len(_SECTION_ORDER)
    if key == "model.init_std":  # an initialization variant: show it with init.*
        rank = 0
    first = _FIRST_KEYS.index(key) if key in _FIRST_KEYS else len(_FIRST_KEYS)
    return (rank, first, key)


# --------------------------------------------------------------------------------------------
# Entry point


def write_report(folder: Path, out: Path | None = None) -> dict[str, Any]:
    """Read `folder`, write summary.csv, summary.md and figures/ into `out` (default `folder`).

    Returns {"runs", "configurations", "unfinished", "keys", "rows", "files"}; raises ReportError
    when there is no finished run or `out` cannot be written, before writing anything. Everything
    is computed and rendered first, then written (each file atomically)."""
    folder = Path(folder)
    out = folder if out is None else Path(out)
    runs, unfinished = scan_sweep(folder)
    if not runs:
        raise ReportError(f"no finished runs under {folder} (a finished run is a folder with "
                          f"{SUMMARY_FILE} and {ROUNDS_FILE}); {len(unfinished)} unfinished")
    problem = out_folder_problem(out)
    if problem:
        raise ReportError(problem)
    unfinished = [Unfinished(_relative(u.path, folder), u.reason, u.settings) for u in unfinished]
    groups = group_runs(runs)
    keys = varying_keys(groups) or [k for k in (INIT_KEY,) if any(k in g.settings for g in groups)]
    rows = summarize(groups, keys)
    skewed = asks_for_skew(groups)
    rendered = render_figures(groups, keys)
    decompositions = penalty.decompositions(groups)
    rendered[penalty.FIGURE_FILE] = penalty.render_figure(decompositions)
    tables = {penalty.CSV_FILE: penalty.render_csv(decompositions) if decompositions else None}
    figures = [out / FIGURES_DIR / name for name, png in rendered.items() if png is not None]
    duplicates = [_relative(p, folder) for g in groups for p in g.duplicates]
    notes = []
    if duplicates:
        notes.append(f"Ignored {len(duplicates)} duplicate run(s) (same settings and seed as an earlier "
                     "folder): " + ", ".join(f"`{p}`" for p in duplicates) + ".")
    wall = [r.wall_time_s for r in runs if not math.isnan(r.wall_time_s)]
    if wall:
        notes.append(f"Server wall time of the finished runs: {math.fsum(wall):.1f} s in total, "
                     f"{math.fsum(wall) / len(wall):.1f} s per run.")
    markdown = render_markdown(rows, keys, unfinished, source=str(folder), n_runs=sum(len(g.runs) for g in groups),
                               figures=[f"{FIGURES_DIR}/{p.name}" for p in figures], notes=notes, skewed=skewed,
                               sections=[text for text in [penalty.render_markdown(decompositions)] if text])
    csv_text = render_csv(rows, keys, skewed)
    write_figures(rendered, out / FIGURES_DIR)
    write_text_atomic(out / "summary.csv", csv_text)
    write_text_atomic(out / "summary.md", markdown)
    for name, text in tables.items():  # a section's table, or its stale copy removed
        if text is None:
            (out / name).unlink(missing_ok=True)
        else:
            write_text_atomic(out / name, text)
    return {"runs": sum(len(g.runs) for g in groups), "configurations": len(groups), "unfinished": unfinished,
            "duplicates": duplicates, "keys": keys, "rows": rows,
            "files": [out / "summary.csv", out / "summary.md", *(out / n for n, t in tables.items() if t is not None),
                      *figures]}


def out_folder_problem(out: Path) -> str | None:
    """The one-line problem with writing the report into `out` (None if fine).

    Tried with a probe file (and the folder made if missing), since permission bits alone do not
    tell (root writes anywhere, a read-only mount refuses everyone).
    """
    if out.exists() and not out.is_dir():
        return f"--out={out} is a file: give a folder"
    targets = [out, out / FIGURES_DIR] if (out / FIGURES_DIR).is_dir() else [out]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for target in targets:
            with tempfile.TemporaryFile(dir=target):
                pass
    except OSError as error:
        return f"--out={out} cannot be written ({error.strerror or type(error).__name__}): give a writable folder"
    return None


def _relative(path: Path, folder: Path) -> Path:
    try:
        return path.relative_to(folder)
    except ValueError:
        return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m initmatters.report",
        description="Summarize a sweep folder: summary.csv, summary.md and figures/*.png "
                    "(mean ± std over seeds per configuration).")
    parser.add_argument("folder", type=Path, help="sweep folder; every subfolder with summary.json "
                        "and rounds.csv is a finished run")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    try:
        result = write_report(args.folder, args.out)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a one-line error for the user; --debug shows the traceback
        return report_failure(error, args.debug)
    out = args.folder if args.out is None else args.out
    print(f"report: {result['runs']} finished runs in {result['configurations']} configurations, "
          f"{len(result['unfinished'])} unfinished, {len(result['duplicates'])} duplicate(s) ignored; "
          f"varying: {', '.join(result['keys']) or 'nothing'}; "
          f"wrote {len(result['files'])} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
