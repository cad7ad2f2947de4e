"""Edge: live progress bars on a terminal (rich), plain lines everywhere else.

INITMATTERS_PROGRESS chooses, for initmatters-run and initmatters-sweep alike:
  auto (default)  a bar when stdout and stderr are both terminals and TERM is not `dumb`, else plain lines
  bar             always a bar (even into a file or a pipe)
  plain           the plain lines (what logs and CI get)
A run's bar shows rounds done/total, the test error, the task's progress metric, elapsed and time
left; a sweep's bar shows jobs done/total, failed, resumed, time left and the current job with its
round. While a bar is shown, every other line (the settings, warnings, errors, Flower's log) is
printed above it; the per-round lines (a sweep: the per-job lines of finished jobs) are left out, as
the bar shows them. NO_COLOR is honoured by rich (a bar without colours).

Where the ServerApp runs in another process (initmatters-run --backend ray or --connection, a
sweep on a connection), the bar is fed from the progress lines that `flwr run --stream` passes on
(`streamed_rounds_to`); initmatters-deploy keeps the plain lines.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

from initmatters.flower_log import FLOWER_LOGGER, PROJECT_PREFIX
from initmatters_core.results import RoundProgress
from initmatters_core.settings import SettingError

PROGRESS_ENV = "INITMATTERS_PROGRESS"
PROGRESS_MODES = ("auto", "bar", "plain")

OnRound = Callable[[RoundProgress], None]


def progress_mode(environ: Mapping[str, str] | None = None) -> str:
    """The value of INITMATTERS_PROGRESS (auto when unset or empty); SettingError for any other value."""
    value = (os.environ if environ is None else environ).get(PROGRESS_ENV, "").strip()
    if value.lower() in ("", *PROGRESS_MODES):
        return value.lower() or "auto"
    raise SettingError(f"{PROGRESS_ENV}={value!r} is invalid: allowed {'|'.join(PROGRESS_MODES)}")


def wants_bar(environ: Mapping[str, str] | None = None, streams: tuple[TextIO, ...] | None = None) -> bool:
    """Whether to show a live bar: INITMATTERS_PROGRESS=bar, or auto and every one of `streams`
    (default: stdout and stderr) a terminal, TERM not `dumb`. SettingError for a bad value."""
    environ = os.environ if environ is None else environ
    mode = progress_mode(environ)
    if mode != "auto":
        return mode == "bar"
    streams = (sys.stdout, sys.stderr) if streams is None else streams
    return environ.get("TERM", "") != "dumb" and all(_is_terminal(stream) for stream in streams)


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar_console() -> Console:
    """The bar's console: stderr, a terminal even when forced into a file (INITMATTERS_PROGRESS=bar);
    lines printed above the bar stay as they are (no highlighting added, long lines wrapped by the
    terminal, not broken by rich)."""
    return Console(stderr=True, force_terminal=True, highlight=False, soft_wrap=True)


@contextmanager
def _live(progress: Progress) -> Iterator[None]:
    """Show `progress`; meanwhile prints, and the log handlers (Flower's, the root logger's) that
    write to this stdout or stderr, go above the bar instead of through it."""
    originals = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
    progress.start()
    moved: list[tuple[logging.StreamHandler, TextIO]] = []
    try:
        for logger in (logging.getLogger(), logging.getLogger(FLOWER_LOGGER)):
            for handler in logger.handlers:
                name = originals.get(id(getattr(handler, "stream", None)))
                if isinstance(handler, logging.StreamHandler) and name is not None \
                        and getattr(sys, name) is not handler.stream:  # rich redirected it
                    moved.append((handler, handler.setStream(getattr(sys, name))))
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)
        progress.stop()


class _Status(ProgressColumn):
    """A task's `status` field, cut at the terminal's edge (not wrapped, not squeezing the bar)."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("status", ""), no_wrap=True, overflow="ellipsis")


def _bar_columns(*, elapsed: bool) -> list[ProgressColumn]:
    """description, bar, done/total, [a ticking elapsed time,] status: every column but the status
    keeps its width on a narrow terminal."""
    columns: list[ProgressColumn] = [TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                                     BarColumn(bar_width=24, table_column=Column(no_wrap=True)),
                                     MofNCompleteColumn(table_column=Column(no_wrap=True))]
    if elapsed:
        columns.append(TimeElapsedColumn(table_column=Column(no_wrap=True)))
    return [*columns, _Status()]


class RunBar:
    """One run's bar: rounds done/total, test error, the progress metric, elapsed and time left
    (the numbers of the plain progress line, a resumed run's earlier time included)."""

    def __init__(self, num_rounds: int, console: Console | None = None) -> None:
        self.progress = Progress(*_bar_columns(elapsed=False), console=console or bar_console())
        self.task = self.progress.add_task("round", total=num_rounds, status="starting")

    def round_done(self, progress: RoundProgress) -> None:
        left = f"~{progress.seconds_left:.1f}s left" if progress.round else "starting"
        self.progress.update(self.task, completed=progress.round,
                             status=f"test_error {progress.test_error:.4f} | {progress.metric} "
                                    f"{progress.metric_text()} | {progress.elapsed_s:.1f}s, {left}")

    @contextmanager
    def shown(self) -> Iterator[OnRound]:
        """The bar on the terminal while the block runs; yields the run's on_round callback."""
        with _live(self.progress):
            yield self.round_done


@contextmanager
def run_progress(num_rounds: int, bar: bool) -> Iterator[OnRound | None]:
    """A run's on_round callback with its bar shown meanwhile (bar=True), or None (plain lines)."""
    if not bar:
        yield None
        return
    with RunBar(num_rounds).shown() as on_round:
        yield on_round


class SweepBar:
    """A sweep's bars: jobs done/total with failed, resumed, elapsed and time left; below it the
    current job's rounds (shown while a job runs)."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.progress = Progress(*_bar_columns(elapsed=True), console=console or bar_console())
        self.jobs = self.progress.add_task("jobs ", total=total, status="(0 failed, 0 resumed)")
        self.rounds = self.progress.add_task("round", total=None, visible=False, status="")

    def job_started(self, label: str, num_rounds: int) -> None:
        """The job now running (e.g. `#3 init=random seed=1`), with its number of rounds."""
        self.progress.reset(self.rounds, total=num_rounds, completed=0, visible=True, status=label)

    def round_done(self, progress: RoundProgress) -> None:
        """The current job's round (its on_round callback)."""
        self.progress.update(self.rounds, completed=progress.round)

    def job_finished(self, done: int, failed: int, resumed: int, seconds_left: float | None) -> None:
        """A job is done (or failed, or found finished); seconds_left: None while unknown."""
        left = "" if seconds_left is None else f" ~{seconds_left:.0f}s left"
        self.progress.update(self.jobs, completed=done, status=f"({failed} failed, {resumed} resumed){left}")
        self.progress.update(self.rounds, visible=False)

    @contextmanager
    def shown(self) -> Iterator[SweepBar]:
        """The bars on the terminal while the block runs."""
        with _live(self.progress):
            yield self


# A progress line as `flwr run --stream` passes it on (Flower's level, colours, Ray's prefix around it).
_STREAMED_ROUND = re.compile(re.escape(PROJECT_PREFIX) + r" round (\d+)/(\d+) \| test_error (\S+) \| (\S+) (\S+) \| "
                             r"([\d.]+)s elapsed")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def streamed_round(line: str) -> RoundProgress | None:
    """The RoundProgress of a progress line that a ServerApp in another process logged (None for any other line)."""
    match = _STREAMED_ROUND.search(_ANSI.sub("", line))
    if match is None:
        return None
    done, total, test_error, metric, value, elapsed = match.groups()
    return RoundProgress(int(done), int(total), float(test_error), metric, _number(value), float(elapsed))


def _number(text: str) -> float:
    """An int for a count as the progress line writes it (misaligned 4), else a float (0.2500, nan)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def streamed_rounds_to(on_round: OnRound, drop_line: Callable[[str], bool] | None) -> Callable[[str], bool]:
    """A drop_line filter for `flwr run --stream` output: progress lines go to `on_round` (and are
    dropped), the others are judged by `drop_line` (None: kept)."""

    def drop(line: str) -> bool:
        progress = streamed_round(line)
        if progress is not None:
            on_round(progress)
            return True
        return drop_line is not None and drop_line(line)

    return drop
