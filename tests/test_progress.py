"""Live progress on a terminal (initmatters.progress): which output a run and a sweep get, what the
bar receives, and that without a terminal the plain lines are unchanged."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from flower_fakes import task_identity  # noqa: F401 (autouse: instruction messages need run/node ids)
from rich.console import Console

from initmatters.compose import load_settings
from initmatters.inline import InlineGrid, client_runner
from initmatters.launch import PROJECT_ROOT, stop_process
from initmatters.progress import (
    PROGRESS_ENV,
    RunBar,
    SweepBar,
    progress_mode,
    streamed_round,
    streamed_rounds_to,
    wants_bar,
)
from initmatters_core.results import RoundLog, RoundProgress, RunFiles, read_rounds_csv
from initmatters_core.settings import SettingError
from server_app.experiment import run_federated

ROUNDS = 6
OVERRIDES = f"debug=default fl.num_rounds={ROUNDS} log.plots=false"


class Stream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        super().isatty()  # a closed stream raises ValueError, as a real one does
        return self.terminal


def fake_terminal() -> Console:
    """A rich console writing into a string as if it were a 200-column terminal."""
    return Console(file=io.StringIO(), force_terminal=True, width=200, highlight=False, soft_wrap=True)


def screen_text(console: Console) -> str:
    """What the fake terminal received, colours left out."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())


# -- choosing the output ---------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "mode"), [(None, "auto"), ("", "auto"), (" bar ", "bar"), ("PLAIN", "plain"),
                                             ("auto", "auto")])
def test_the_mode_is_read_from_the_environment(value: str | None, mode: str) -> None:
    environ = {} if value is None else {PROGRESS_ENV: value}
    assert progress_mode(environ) == mode


def test_a_bad_mode_is_one_line() -> None:
    with pytest.raises(SettingError) as raised:
        progress_mode({PROGRESS_ENV: "fancy"})
    assert str(raised.value) == "INITMATTERS_PROGRESS='fancy' is invalid: allowed auto|bar|plain"


@pytest.mark.parametrize(("environ", "terminals", "bar"), [
    ({}, (True, True), True),
    ({}, (True, False), False),  # stderr into a file or a pipe
    ({}, (False, True), False),  # stdout into a file, e.g. `initmatters-run ... > log.txt`
    ({}, (False, False), False),  # CI
    ({"TERM": "dumb"}, (True, True), False),  # a terminal that cannot redraw a line
    ({"NO_COLOR": "1"}, (True, True), True),  # a bar without colours (rich reads NO_COLOR)
    ({PROGRESS_ENV: "plain"}, (True, True), False),
    ({PROGRESS_ENV: "bar"}, (False, False), True),
    ({PROGRESS_ENV: "bar", "TERM": "dumb"}, (False, False), True),
])
def test_a_bar_only_on_a_terminal_unless_chosen(environ: dict[str, str], terminals: tuple[bool, bool],
                                                bar: bool) -> None:
    assert wants_bar(environ, tuple(Stream(terminal) for terminal in terminals)) is bar


def test_a_closed_or_bare_stream_is_not_a_terminal() -> None:
    closed = Stream(True)
    closed.close()
    assert not wants_bar({}, (closed, Stream(True)))
    assert not wants_bar({}, (object(), Stream(True)))  # type: ignore[arg-type]


def test_no_color_gives_a_bar_without_colours(monkeypatch) -> None:
    from initmatters.progress import bar_console

    assert not bar_console().no_color
    monkeypatch.setenv("NO_COLOR", "1")
    assert bar_console().no_color


def test_run_refuses_a_bad_mode_before_anything_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    from initmatters import run

    monkeypatch.setenv(PROGRESS_ENV, "fancy")
    assert run.main(["debug=default", "--output-dir", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: INITMATTERS_PROGRESS='fancy' is invalid: allowed auto|bar|plain"]
    assert captured.out == "" and not (tmp_path / "run").exists()


def test_sweep_refuses_a_bad_mode_before_hydra_starts(monkeypatch, capsys) -> None:
    from initmatters.sweep import check_command_line

    monkeypatch.setenv(PROGRESS_ENV, "yes")
    assert check_command_line(["--multirun", "debug=default", "seed=0,1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: INITMATTERS_PROGRESS='yes' is invalid: allowed auto|bar|plain"]
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    assert check_command_line(["--multirun", "debug=default", "seed=0,1"]) == 0


# -- the plain lines -----------------------------------------------------------------------------

def line_before(done: int, num_rounds: int, test_error: float, metric: str, value: float, elapsed: float) -> str:
    """The progress line as RoundLog wrote it before RoundProgress existed (its code, verbatim)."""
    left = elapsed / done * (num_rounds - done) if done else float("nan")
    eta = f"~{left:.1f}s left" if done else "starting"
    alignment = f"{metric} {value if isinstance(value, int) else format(value, '.4f')}"
    return (f"round {done}/{num_rounds} | test_error {test_error:.4f} "
            f"| {alignment} | {elapsed:.1f}s elapsed, {eta}")


@pytest.mark.parametrize("progress", [
    RoundProgress(0, 50, 0.5, "misaligned", 21, 0.0),
    RoundProgress(3, 50, 0.21, "misaligned", 4, 1.234),
    RoundProgress(50, 50, 0.1695, "misaligned", 0, 10.3),
    RoundProgress(2, 7, 0.8125, "conv1_pc_energy", 0.3333333, 12.06),
    RoundProgress(1, 7, float("nan"), "conv1_pc_energy", float("nan"), 0.05),
])
def test_the_plain_line_is_the_line_of_before(progress: RoundProgress) -> None:
    expected = line_before(progress.round, progress.num_rounds, progress.test_error, progress.metric,
                           progress.metric_value, progress.elapsed_s)
    assert progress.line() == expected


def test_without_a_terminal_a_run_prints_the_plain_lines(tmp_path: Path) -> None:
    """initmatters-run with stdout and stderr into pipes (as in CI), INITMATTERS_PROGRESS unset: a
    plain line per round, each the line of before computed from rounds.csv, and nothing of a bar."""
    output_dir = tmp_path / "run"
    environ = {key: value for key, value in os.environ.items() if key != PROGRESS_ENV}
    process = subprocess.Popen([sys.executable, "-m", "initmatters.run", *OVERRIDES.split(), "--workers", "0",
                                "--output-dir", str(output_dir)], cwd=PROJECT_ROOT, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=600)
    finally:
        stop_process(process)
    assert process.returncode == 0, out[-2000:] + err[-2000:]
    assert "\x1b[2K" not in out + err and "━" not in out + err and "\r" not in out + err
    lines = [line.split("[initmatters] ", 1)[1] for line in err.splitlines() if "[initmatters] round " in line]
    rows = read_rounds_csv(RunFiles(output_dir).rounds)
    assert len(lines) == len(rows) == ROUNDS + 1
    for line, row in zip(lines, rows, strict=True):
        done = int(row["round"])
        before = line_before(done, ROUNDS, row["test_error"], "misaligned", int(row["misaligned"]), row["elapsed_s"])
        numbers, times = line.rsplit(" | ", 1)
        assert numbers == before.rsplit(" | ", 1)[0]
        # the times: the line's 0.1 s against the file's 1 ms
        elapsed, left = re.fullmatch(r"(\d+\.\d)s elapsed, (starting|~\d+\.\ds left)", times).groups()
        assert abs(float(elapsed) - row["elapsed_s"]) <= 0.051
        if done:
            assert abs(float(left[1:-6]) - row["elapsed_s"] / done * (ROUNDS - done)) <= 0.051 + 0.001 * ROUNDS
        else:
            assert left == "starting"
    assert out.splitlines()[0].startswith("initmatters: 2 clients, 6 rounds, ")
    assert out.splitlines()[-1] == f"initmatters: finished; results in {output_dir.resolve()}"
    assert [line.split("[initmatters] ", 1)[1].split(":")[0] for line in err.splitlines()
            if "[initmatters]" in line][-1] == "done"


# -- the bars ------------------------------------------------------------------------------------

def test_the_bar_receives_every_round_and_ends_at_the_total(tmp_path: Path) -> None:
    """A run with a bar on a fake terminal: each round reaches the bar, no per-round line is
    reported, the other lines are, and the bar ends at R/R with the last round's numbers."""
    settings, yaml = load_settings(OVERRIDES)
    console = fake_terminal()
    bar = RunBar(settings.fl.num_rounds, console=console)
    received: list[RoundProgress] = []
    reported: list[str] = []

    def on_round(progress: RoundProgress) -> None:
        received.append(progress)
        bar.round_done(progress)

    with bar.shown(), client_runner(0) as runner:
        run_federated(InlineGrid(runner, settings.fl.num_clients), settings, yaml, tmp_path / "run",
                      report=reported.append, on_round=on_round)
    rows = read_rounds_csv(RunFiles(tmp_path / "run").rounds)
    assert [progress.round for progress in received] == list(range(ROUNDS + 1))
    assert [progress.test_error for progress in received] == [row["test_error"] for row in rows]
    assert [progress.metric_value for progress in received] == [int(row["misaligned"]) for row in rows]
    assert not any(message.startswith("round ") for message in reported)
    assert reported[0].startswith("writing results to ") and reported[-1].startswith("done: test_error ")
    task = bar.progress.tasks[0]
    assert task.completed == task.total == ROUNDS and task.finished
    screen = screen_text(console)
    last = received[-1]
    assert f"{ROUNDS}/{ROUNDS} test_error {last.test_error:.4f} | misaligned {last.metric_value} |" in screen


def test_the_bar_jumps_to_the_round_reached(tmp_path: Path) -> None:
    """A resumed run's first new round (here 7 of 10) puts the bar at 7, with RoundLog's own numbers."""
    bar = RunBar(10, console=fake_terminal())
    log = RoundLog(tmp_path / "rounds.csv", 10, pytest.fail, ("round", "test_error", "misaligned", "elapsed_s"),
                   clock=iter([100.0, 130.0]).__next__, on_round=bar.round_done)
    with bar.shown():
        log.add_eval(7, {"test_error": 0.125, "misaligned": 3})
    assert bar.progress.tasks[0].completed == 7
    screen = screen_text(bar.progress.console)
    assert "7/10 test_error 0.1250 | misaligned 3 | 30.0s, ~12.9s left" in screen  # 30 s / 7 * 3


def test_lines_printed_and_logged_while_the_bar_shows_go_above_it(capfd) -> None:
    """print(), Flower's log and the root logger's stream handlers reach the bar's console (above the
    bar), and write to their own streams again afterwards."""
    import logging

    from flwr.common.logger import log

    console = fake_terminal()
    root_handler = logging.StreamHandler()  # like Hydra's console handler (stderr here)
    logging.getLogger().addHandler(root_handler)
    try:
        bar = RunBar(3, console=console)
        with bar.shown():
            print("a line printed meanwhile")
            log(logging.WARNING, "a Flower warning meanwhile")
            logging.getLogger("some.library").warning("a root warning meanwhile")
        log(logging.WARNING, "a Flower warning afterwards")
    finally:
        logging.getLogger().removeHandler(root_handler)
    screen = screen_text(console)
    for line in ("a line printed meanwhile", "a Flower warning meanwhile", "a root warning meanwhile"):
        assert line in screen
    assert "afterwards" not in screen
    assert "a Flower warning afterwards" in capfd.readouterr().err


def test_log_streams_are_restored_whether_or_not_rich_redirected_them() -> None:
    import logging

    from flwr.common.logger import console_handler

    before = console_handler.stream
    with RunBar(2, console=fake_terminal()).shown():  # a terminal: rich redirects, the handler follows
        assert console_handler.stream is not before
    assert console_handler.stream is before
    with RunBar(2, console=Console(file=io.StringIO())).shown():  # no terminal: nothing redirected
        assert console_handler.stream is before
    assert console_handler.stream is before
    assert all(getattr(handler, "stream", True) is not None for handler in logging.getLogger().handlers)


def sweep_jobs(count: int, num_rounds: int) -> list:
    """The launcher's jobs `#i seed=i` with `num_rounds` rounds (no config needed to count them)."""
    from hydra_plugins.initmatters_launcher.shared_simulation_launcher import _Job

    settings = SimpleNamespace(fl=SimpleNamespace(num_rounds=num_rounds))
    return [_Job(index, [f"seed={index}"], None, Path(f"/tmp/job{index}"), settings)  # type: ignore[arg-type]
            for index in range(count)]


def test_the_sweep_bar_counts_jobs_and_prints_failures_above_it(capsys) -> None:
    from hydra_plugins.initmatters_launcher.shared_simulation_launcher import _Progress

    console = fake_terminal()
    progress = _Progress(total=3)
    jobs = sweep_jobs(3, 20)
    with SweepBar(3, console=console).shown() as progress.bar:
        job_bar, round_bar = progress.bar.progress.tasks
        progress.record(jobs[0], "resumed", None, "(finished run in /tmp/job0)")
        assert job_bar.fields["status"] == "(0 failed, 1 resumed)"  # no time left known before a job ran
        progress.starting(jobs[1])
        progress.on_round(RoundProgress(4, 20, 0.25, "misaligned", 2, 1.0))
        assert (round_bar.visible, round_bar.completed, round_bar.total) == (True, 4, 20)
        assert round_bar.fields["status"] == "#1 seed=1"
        progress.record(jobs[1], "done", 8.0, "(test_error 0.2500, 8.0s)")
        assert job_bar.fields["status"] == "(0 failed, 1 resumed) ~8s left" and not round_bar.visible
        progress.starting(jobs[2])
        assert (round_bar.visible, round_bar.completed, round_bar.total) == (True, 0, 20)
        progress.record(jobs[2], "FAILED", 2.0, "(boom)")
    assert job_bar.completed == job_bar.total == 3 and not round_bar.visible
    screen = screen_text(console)
    assert " 3/3 " in screen and "(1 failed, 1 resumed) ~0s left" in screen
    assert "[sweep] 3/3 jobs (1 failed, 1 resumed) | #2 seed=2: FAILED (boom)" in screen  # printed above the bar
    assert "seed=1: done" not in screen and "resumed (finished run" not in screen  # the bar shows those
    assert capsys.readouterr().out == ""


def test_without_a_bar_the_sweep_prints_a_line_per_job(capsys) -> None:
    from hydra_plugins.initmatters_launcher.shared_simulation_launcher import _Progress

    progress = _Progress(total=2)
    job = sweep_jobs(1, 20)[0]
    progress.starting(job)
    assert progress.on_round is None
    progress.record(job, "done", 4.0, "(test_error 0.2500, 4.0s)")
    line = capsys.readouterr().out
    assert re.fullmatch(r"\[sweep\] 1/2 jobs \(0 failed, 0 resumed\) \| #0 seed=0: done \(test_error 0\.2500, "
                        r"4\.0s\) \| \d+s elapsed, ~4s left\n", line)


# -- a ServerApp in another process (--backend ray, --connection) ----------------------------------

def test_a_streamed_progress_line_is_read_back() -> None:
    progress = RoundProgress(3, 20, 0.21, "misaligned", 4, 1.2)
    streamed = f"\x1b[92mINFO \x1b[0m:      [initmatters] {progress.line()}\n"
    assert streamed_round(streamed) == progress
    assert streamed_round(f"(ServerAppActor pid=12) INFO :      [initmatters] {progress.line()}") == progress
    image = streamed_round("INFO :      [initmatters] round 2/7 | test_error 0.8125 | conv1_pc_energy 0.3333 | "
                           "12.1s elapsed, ~30.2s left")
    assert image == RoundProgress(2, 7, 0.8125, "conv1_pc_energy", 0.3333, 12.1)
    missing = streamed_round("INFO :      [initmatters] round 0/7 | test_error nan | conv1_pc_energy nan | "
                             "0.0s elapsed, starting")
    assert missing is not None and math.isnan(missing.test_error) and math.isnan(missing.metric_value)
    for other in ("INFO :      [initmatters] round 2: 1 of 2 scheduled clients replied, none from partition-id [1]",
                  "INFO :      [initmatters] done: test_error 0.0900, misaligned 4 -> 0 in 6.9s; results in /x",
                  "round 3/20 | test_error 0.2100 | misaligned 4 | 1.2s elapsed"):  # not the project's log line
        assert streamed_round(other) is None


def test_streamed_progress_lines_feed_the_bar_and_the_others_pass() -> None:
    received: list[RoundProgress] = []
    drop = streamed_rounds_to(received.append, lambda line: line.startswith("INFO : noise"))
    progress_line = "INFO :      [initmatters] round 1/2 | test_error 0.5000 | misaligned 3 | 0.4s elapsed, ~0.4s left"
    assert drop(progress_line) is True
    assert drop("INFO : noise") is True
    assert drop("WARNING :  something to act on") is False
    assert received == [RoundProgress(1, 2, 0.5, "misaligned", 3, 0.4)]
    assert streamed_rounds_to(received.append, None)("ERROR : kept") is False


def test_the_ray_backend_feeds_the_bar_from_the_stream(tmp_path: Path, monkeypatch) -> None:
    """initmatters.run --backend ray with a bar: the line filter hands the progress lines to the bar."""
    from contextlib import nullcontext

    from initmatters import run

    seen: list[bool] = []

    def fake_flwr_run(project, env, run_config, federation_config=None, connection=None, drop_line=None,
                      prefix=()) -> int:
        seen.append(drop_line("INFO :      [initmatters] round 1/2 | test_error 0.5000 | misaligned 3 | "
                              "0.4s elapsed, ~0.4s left"))
        seen.append(drop_line("INFO :      [initmatters] client sizes [10, 10]"))
        return 0

    monkeypatch.setattr(run, "flwr_run", fake_flwr_run)
    monkeypatch.setattr(run, "simulation_superlink", lambda home: nullcontext({}))
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    run.main(["debug=default", "--output-dir", str(tmp_path / "run"), "--flwr-home", str(tmp_path / "home"),
              "--backend", "ray"])
    assert seen == [True, False]
