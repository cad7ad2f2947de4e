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
experiments); blank where no such partner exists.

Everything is written atomically (temporary file + rename) into --out (default: the sweep
folder): summary.csv, summary.md and figures/*.png.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import yaml  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from initmatters.results import (  # noqa: E402
    SUMMARY_FILE,
    format_cell,
    read_rounds_csv,
    write_bytes_atomic,
    write_text_atomic,
)

ROUNDS_FILE = "rounds.csv"
CONFIG_FILE = "config.yaml"
FIGURES_DIR = "figures"
SEED_KEY = "seed"
H_KEY = "heterogeneity.h"
SCHEME_KEY = "heterogeneity.name"
HETEROGENEITY_PREFIX = "heterogeneity."
INIT_KEY = "init.name"
STEPS_KEY = "init.steps"
TAU_KEY = "fl.local_steps"

# Per-configuration statistics: (column stem, markdown header, decimals in summary.md).
METRICS: tuple[tuple[str, str, int], ...] = (
    ("test_error", "final test error", 4),
    ("test_loss", "final test loss", 4),
    ("misaligned_init", "misaligned at round 0", 1),
    ("misaligned_final", "misaligned at end", 1),
    ("realised_h", "realised h", 4),
    ("heterogeneity_penalty", "heterogeneity penalty", 4),
)
PER_RUN_METRICS = tuple(stem for stem, _, _ in METRICS if stem != "heterogeneity_penalty")

# One colour per initialization, the same in every panel of every figure (matplotlib's tab10);
# an init not listed gets a spare colour fixed by its name. Variants of one init in a figure
# (other init.* settings, model.init_std, other settings of a line) are lighter shades of it.
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
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo")

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
    misaligned_init: float
    misaligned_final: float
    realised_h: float
    wall_time_s: float

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
    """One configuration: runs with equal settings except the seed, sorted by seed."""

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


def flatten_settings(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"init": {"name": "random"}, "seed": 0} -> {"init.name": "random", "seed": 0}."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_settings(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def scan_sweep(folder: Path) -> tuple[list[Run], list[Unfinished]]:
    """(finished runs, unfinished runs) under `folder`, both sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder")
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
    return Run(
        path=directory,
        settings=flatten_settings(summary["settings"]),
        rounds=rounds,
        test_error=_number(final.get("test_error")),
        test_loss=_number(final.get("test_loss")),
        misaligned_init=_number(misaligned_init),
        misaligned_final=_number(final.get("misaligned")),
        realised_h=_number(summary.get("realised_h")),
        wall_time_s=_number(summary.get("wall_time_s")),
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
    """Configurations (equal settings except seed); a second run with the same settings and seed
    is kept out of the statistics and listed in Group.duplicates. Groups are in first-seen order."""
    groups: dict[tuple, Group] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        settings = {k: v for k, v in run.settings.items() if k != SEED_KEY}
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
    stem in METRICS `<stem>_mean` and `<stem>_std` (NaN when undefined), and
    heterogeneity_penalty_n (how many seeds had an h=0 partner)."""
    keys = list(varying_keys(groups) if keys is None else keys)
    index = {group.key: group for group in groups}
    rows = []
    for group in sorted(groups, key=lambda g: tuple(_sort_value(g.settings.get(k)) for k in keys)):
        row: dict[str, Any] = {k: group.settings.get(k) for k in keys}
        row["n_seeds"] = len(group.runs)
        row["seeds"] = " ".join(str(run.seed) for run in group.runs)
        for stem in PER_RUN_METRICS:
            row[f"{stem}_mean"], row[f"{stem}_std"] = mean_std([run.metric(stem) for run in group.runs])
        penalties = heterogeneity_penalties(group, index)
        row["heterogeneity_penalty_mean"], row["heterogeneity_penalty_std"] = mean_std(penalties)
        row["heterogeneity_penalty_n"] = len(penalties)
        rows.append(row)
    return rows


def heterogeneity_penalties(group: Group, index: Mapping[tuple, Group]) -> list[float]:
    """test_error minus the partner's per seed: the label_skew h=0 configuration with the same
    other settings (label_skew), or the iid one (dirichlet, pathological); empty without one."""
    scheme = group.settings.get(SCHEME_KEY)
    if scheme == "label_skew" and group.settings.get(H_KEY) is not None:
        partner = index.get(_freeze({**group.settings, H_KEY: 0.0}))
    elif scheme in ("dirichlet", "pathological"):
        unset = {k: None for k in group.settings if k.startswith(HETEROGENEITY_PREFIX)}  # iid has no options
        partner = index.get(_freeze({**group.settings, **unset, SCHEME_KEY: "iid"}))
    else:
        return []
    if partner is None:
        return []
    baseline = partner.by_seed()
    return [run.test_error - baseline[run.seed].test_error for run in group.runs
            if run.seed in baseline and not math.isnan(run.test_error - baseline[run.seed].test_error)]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample std with n - 1) of the non-NaN values; NaN where undefined."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return math.nan, math.nan
    mean = math.fsum(finite) / len(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


# --------------------------------------------------------------------------------------------
# Tables


def summary_columns(keys: Sequence[str]) -> list[str]:
    columns = [*keys, "n_seeds", "seeds"]
    for stem, _, _ in METRICS:
        columns += [f"{stem}_mean", f"{stem}_std"]
    return [*columns, "heterogeneity_penalty_n"]


def render_csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """summary.csv text: blank cells for missing/NaN, repr-exact floats."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = summary_columns(keys)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def format_mean_std(mean: float, std: float, decimals: int, signed: bool = False) -> str:
    """'0.1570 ± 0.0123'; the mean alone for one seed; '' when there is no value."""
    if mean is None or math.isnan(mean):
        return ""
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{decimals}f}"
    if std is None or math.isnan(std):
        return text
    return f"{text} ± {std:.{decimals}f}"


def render_markdown(rows: Sequence[Mapping[str, Any]], keys: Sequence[str],
                    unfinished: Sequence[Unfinished] = (), *, title: str = "Sweep summary",
                    source: str = "", n_runs: int | None = None,
                    figures: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """summary.md: the per-configuration table (mean ± std over seeds), unfinished runs, figures."""
    n_runs = sum(int(row["n_seeds"]) for row in rows) if n_runs is None else n_runs
    lines = [f"# {title}", ""]
    where = f" in `{source}`" if source else ""
    lines += [f"{n_runs} finished runs{where}, {len(rows)} configurations; "
              "cells are mean ± std over seeds (sample std, n - 1; the mean alone for one seed).", ""]
    headers = [*keys, "n_seeds", *(header for _, header, _ in METRICS)]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("| " + " | ".join("---" for _ in headers) + " |")
    for row in rows:
        cells = [format_setting(row.get(k)) for k in keys] + [str(row["n_seeds"])]
        for stem, _, decimals in METRICS:
            cells.append(format_mean_std(row.get(f"{stem}_mean", math.nan), row.get(f"{stem}_std", math.nan),
                                         decimals, signed=stem == "heterogeneity_penalty"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Heterogeneity penalty: test_error(h) - test_error(h=0) of the label_skew run with "
              "the same other settings and seed (dirichlet/pathological: minus the iid run's), over the "
              "seeds that have such a partner; blank without a partner.", ""]
    lines += [*notes, ""] if notes else []
    lines.append(unfinished_line(unfinished, keys))
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


def format_setting(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------------------------
# Figures


def make_figures(groups: Sequence[Group], keys: Sequence[str], figures_dir: Path) -> list[Path]:
    """Write the figures whose keys vary; remove this report's stale ones; return written paths."""
    makers: dict[str, Callable[[Sequence[Group], Sequence[str]], plt.Figure | None]] = {
        "test_error_vs_h": figure_test_error_vs_h,
        "misaligned_vs_round": figure_misaligned_vs_round,
        "pretraining_steps": figure_pretraining_steps,
        "init_variants": figure_init_variants,
    }
    written = []
    for name, maker in makers.items():
        path = figures_dir / FIGURE_FILES[name]
        figure = maker(groups, keys)
        if figure is None:
            path.unlink(missing_ok=True)
            continue
        _save(figure, path)
        written.append(path)
    return written


def figure_test_error_vs_h(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Final test error vs label_skew h, a line per init (and other settings), a panel per tau."""
    skew = [g for g in groups if g.settings.get(SCHEME_KEY) == "label_skew" and g.settings.get(H_KEY) is not None]
    if len({g.settings[H_KEY] for g in skew}) < 2:
        return None
    panel_keys = [TAU_KEY] if TAU_KEY in keys else []
    line_keys = [k for k in keys if k not in (H_KEY, SCHEME_KEY, TAU_KEY)]
    panels = _partition(skew, panel_keys)
    colours = line_colours(skew, line_keys)
    figure, axes = _panels(len(panels))
    for axis, (panel_label, members) in zip(axes, panels.items(), strict=False):
        for line_label, line in _partition(members, line_keys).items():
            line.sort(key=lambda g: g.settings[H_KEY])
            stats = [mean_std(run.test_error for run in g.runs) for g in line]
            axis.errorbar([g.settings[H_KEY] for g in line], [m for m, _ in stats],
                          yerr=[0.0 if math.isnan(s) else s for _, s in stats], marker="o", capsize=3,
                          label=line_label or "runs", color=colours[line_label])
        axis.set(xlabel="label skew h", ylabel="final test error", title=_tau_title(panel_label))
        axis.legend(fontsize="small")
    figure.suptitle("Test error vs heterogeneity (error bars: std over seeds)")
    return figure


def figure_misaligned_vs_round(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Misaligned filters vs round (mean over seeds) per configuration: colour = init, line
    style = heterogeneity; a panel per value of the other varying settings."""
    init_keys, het_keys = _init_keys(keys), _het_keys(keys)
    if len(groups) < 2 or not (init_keys or het_keys):
        return None
    panel_keys = [k for k in keys if k not in init_keys and k not in het_keys]
    hets = sorted({_label(g, het_keys) for g in groups}, key=lambda s: s)
    colours = line_colours(groups, init_keys)
    styles = dict(zip(hets, cycle(["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3))]), strict=False))
    panels = _partition(groups, panel_keys)
    figure, axes = _panels(len(panels))
    for axis, (panel_label, members) in zip(axes, panels.items(), strict=False):
        for group in sorted(members, key=lambda g: (_label(g, init_keys), _label(g, het_keys))):
            rounds, means = _mean_curve(group.runs, "misaligned")
            init_label, het_label = _label(group, init_keys), _label(group, het_keys)
            label = " | ".join(part for part in (init_label, het_label) if part)
            axis.plot(rounds, means, color=colours[init_label], linestyle=styles[het_label], label=label)
        axis.set(xlabel="round", ylabel="misaligned filters (mean over seeds)", title=panel_label)
        axis.legend(fontsize="small")
    figure.suptitle("Misaligned filters over rounds")
    return figure


def figure_pretraining_steps(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Among init=pretrained: pre-training steps vs misaligned at init and vs final test error."""
    pretrained = [g for g in groups
                  if g.settings.get(INIT_KEY) == "pretrained" and g.settings.get(STEPS_KEY) is not None]
    if len({g.settings[STEPS_KEY] for g in pretrained}) < 2:
        return None
    line_keys = [k for k in keys if k not in (STEPS_KEY, INIT_KEY)]
    colours = line_colours(pretrained, line_keys)
    figure, axes = _panels(2)
    for line_label, line in _partition(pretrained, line_keys).items():
        line.sort(key=lambda g: g.settings[STEPS_KEY])
        steps = [g.settings[STEPS_KEY] for g in line]
        for axis, metric in zip(axes, ("misaligned_init", "test_error"), strict=True):
            stats = [mean_std(run.metric(metric) for run in g.runs) for g in line]
            axis.errorbar(steps, [m for m, _ in stats], yerr=[0.0 if math.isnan(s) else s for _, s in stats],
                          marker="o", capsize=3, label=line_label or "pretrained", color=colours[line_label])
    axes[0].set(xlabel="pre-training steps (init.steps)", ylabel="misaligned filters at round 0")
    axes[1].set(xlabel="pre-training steps (init.steps)", ylabel="final test error")
    for axis in axes:
        axis.legend(fontsize="small")
    figure.suptitle("Pre-training length (error bars: std over seeds)")
    return figure


def figure_init_variants(groups: Sequence[Group], keys: Sequence[str]) -> plt.Figure | None:
    """Bar chart of final test error per initialization variant (its init's colour), a bar per other
    configuration (told apart by hatching)."""
    init_keys = _init_keys(keys)
    variants = _partition(groups, init_keys)
    if len(variants) < 2:
        return None
    colours = line_colours(groups, init_keys)
    other_keys = [k for k in keys if k not in init_keys]
    others = sorted({_label(g, other_keys) for g in groups}, key=lambda s: s)
    hatches = dict(zip(others, cycle(HATCHES), strict=False))
    width = 0.8 / len(others)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(variants) * max(1, len(others)) ** 0.5), 3.8))
    for i, other in enumerate(others):
        xs, means, stds, bar_colours = [], [], [], []
        for x, (variant, members) in enumerate(variants.items()):
            match = [g for g in members if _label(g, other_keys) == other]
            if match:
                mean, std = mean_std(run.test_error for run in match[0].runs)
                xs.append(x - 0.4 + width * (i + 0.5))
                means.append(mean)
                stds.append(0.0 if math.isnan(std) else std)
                bar_colours.append(colours[variant])
        axis.bar(xs, means, width=width, yerr=stds, capsize=3, color=bar_colours, hatch=hatches[other],
                 edgecolor="black", linewidth=0.5, label=other or None)
    axis.set_xticks(range(len(variants)), list(variants), rotation=20, ha="right")
    axis.set(ylabel="final test error", title="Final test error per initialization (error bars: std over seeds)")
    if len(others) > 1:
        handles = [Patch(facecolor="white", edgecolor="black", hatch=hatches[other], label=other) for other in others]
        axis.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def init_colour(name: Any) -> tuple[float, float, float]:
    """The colour of an initialization (init.name), the same in every figure."""
    if name in INIT_COLOURS:
        return to_rgb(INIT_COLOURS[name])
    return to_rgb(SPARE_COLOURS[zlib.crc32(str(name).encode()) % len(SPARE_COLOURS)])


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
            white = 0.6 * i / len(labels)  # at most 60 % white: still visibly the init's hue
            colours[label] = tuple(c + (1.0 - c) * white for c in base)
    return colours


def _init_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k.startswith("init.") or k == "model.init_std"]


def _het_keys(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k.startswith("heterogeneity.")]


def _label(group: Group, keys: Sequence[str]) -> str:
    """'pretrained, steps=50' for keys (init.name, init.steps); names show as their value."""
    parts = []
    for key in keys:
        value = group.settings.get(key)
        if value is None:
            continue
        short = key.rsplit(".", 1)[-1]
        parts.append(format_setting(value) if short == "name" else f"{short}={format_setting(value)}")
    return ", ".join(parts)


def _partition(groups: Iterable[Group], keys: Sequence[str]) -> dict[str, list[Group]]:
    """Groups split by their values of `keys`, ordered by those values, labelled by _label."""
    ordered = sorted(groups, key=lambda g: tuple(_sort_value(g.settings.get(k)) for k in keys))
    parts: dict[str, list[Group]] = {}
    for group in ordered:
        parts.setdefault(_label(group, keys), []).append(group)
    return parts


def _mean_curve(runs: Sequence[Run], column: str) -> tuple[list[float], list[float]]:
    values: dict[float, list[float]] = {}
    for run in runs:
        for row in run.rounds:
            if not math.isnan(row.get(column, math.nan)):
                values.setdefault(row["round"], []).append(row[column])
    rounds = sorted(values)
    return rounds, [math.fsum(values[r]) / len(values[r]) for r in rounds]


def _tau_title(label: str) -> str:
    return label.replace("local_steps=", "local steps tau = ") if label else ""


def _panels(count: int) -> tuple[plt.Figure, list[Any]]:
    columns = min(3, max(1, count))
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.8 * columns, 3.8 * rows), squeeze=False)
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.set_visible(False)
    figure.set_layout_engine("constrained")
    return figure, flat[:count]


def _save(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# Helpers for settings values


def _freeze_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze_value(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze_value(v) for v in value)
    return value


def _freeze(settings: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, _freeze_value(v)) for k, v in settings.items()))


def _same(a: Any, b: Any) -> bool:
    return _freeze_value(a) == _freeze_value(b)


def _sort_value(value: Any) -> tuple:
    if value is None:
        return (2, "")
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, str(value))


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
    when there is no finished run."""
    folder = Path(folder)
    out = folder if out is None else Path(out)
    runs, unfinished = scan_sweep(folder)
    if not runs:
        raise ReportError(f"no finished runs under {folder} (a finished run is a folder with "
                          f"{SUMMARY_FILE} and {ROUNDS_FILE}); {len(unfinished)} unfinished")
    unfinished = [Unfinished(_relative(u.path, folder), u.reason, u.settings) for u in unfinished]
    groups = group_runs(runs)
    keys = varying_keys(groups) or [k for k in (INIT_KEY,) if any(k in g.settings for g in groups)]
    rows = summarize(groups, keys)
    figures = make_figures(groups, keys, out / FIGURES_DIR)
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
                               figures=[f"{FIGURES_DIR}/{p.name}" for p in figures], notes=notes)
    write_text_atomic(out / "summary.csv", render_csv(rows, keys))
    write_text_atomic(out / "summary.md", markdown)
    return {"runs": sum(len(g.runs) for g in groups), "configurations": len(groups), "unfinished": unfinished,
            "duplicates": duplicates, "keys": keys, "rows": rows,
            "files": [out / "summary.csv", out / "summary.md", *figures]}


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
    args = parser.parse_args(argv)
    try:
        result = write_report(args.folder, args.out)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.folder if args.out is None else args.out
    print(f"report: {result['runs']} finished runs in {result['configurations']} configurations, "
          f"{len(result['unfinished'])} unfinished, {len(result['duplicates'])} duplicate(s) ignored; "
          f"varying: {', '.join(result['keys']) or 'nothing'}; "
          f"wrote {len(result['files'])} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
