"""Bad inputs and what each gets: one line, exit code 2, before any start-up; docs/errors.md is this table.

Every case runs the real command-line entry point in-process. The table in docs/errors.md is
rendered from CASES; `python tests/test_bad_inputs.py` rewrites it after a change.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from initmatters import deploy, report, run, sweep

DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
TMP = "<tmp>"  # stands for the test's temporary folder in the table

# (command, arguments, expected stderr (a trailing "..." marks the start of a longer line), setup of files in <tmp>)
CASES: list[tuple[str, list[str], str, str]] = [
    ("run", ["heterogeneity.h=1.5"], "error: heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]", ""),
    ("run", ["init=foo"], "error: init='foo' is invalid: allowed align_flip|checkpoint|federated_pretrained|imagenet|"
                          "misaligned_fraction|pretrained|proxy_pretrained|random", ""),
    ("run", ["fl.lr=0.5", "fl.lr=0.6"], "error: fl.lr is given twice (fl.lr=0.5, fl.lr=0.6): give each setting once",
     ""),
    ("run", ["fl.nonsense=1"], "error: fl.nonsense is not a known setting: allowed fl.num_clients|fl.num_rounds|"
                               "fl.local_steps|fl.lr|fl.batch_size|fl.fraction_train|fl.wait_for_nodes_s|"
                               "fl.local_epochs|fl.momentum|fl.weight_decay|fl.device", ""),
    ("run", ["fl.num_clients=3"], "error: fl.num_clients=3 is invalid: allowed an even number with "
                                  "heterogeneity=label_skew (clients alternate majority label)", ""),
    ("run", ["data=digits", "heterogeneity.noise_skew=0.5"], "error: heterogeneity.noise_skew=0.5 is invalid: "
     "allowed 0 with image data (noise and signal skews exist on the synthetic task only)", ""),
    ("run", ["strategy=fedprox", "+strategy.eta_l=0.1"], "error: strategy.eta_l is not an option of "
                                                         "strategy=fedprox: allowed strategy.proximal_mu", ""),
    ("run", ["fl.device=cuda"], "error: fl.device=cuda is invalid here: allowed cpu|auto "
                                "(torch.cuda.is_available() is False)", "no-gpu"),
    ("run", ["init=checkpoint"], "error: init.path is missing: give it as an override (init.path=...)", ""),
    ("run", ["init=checkpoint", f"init.path={TMP}/missing.pt"],
     f"error: init.path='{TMP}/missing.pt' does not exist: give a saved state dict file", ""),
    ("run", ["debug=default", "init=checkpoint", f"init.path={TMP}/nan.pt"],
     f"error: init.path='{TMP}/nan.pt' holds non-finite values (NaN or inf): nothing to train", "nan.pt"),
    ("run", ["log.wandb_project=my/runs"], "error: log.wandb_project='my/runs' is invalid: allowed a non-empty name "
                                           "without any of / \\ # ? % :", ""),
    ("run", ["log.tensorboard=true"],
     'error: log.tensorboard=true needs the optional extra: pip install -e ".[tensorboard]"', "no-tensorboard"),
    ("run", ["debug=default", "--output-dir", f"{TMP}/a-file"],
     f"error: output-dir {TMP}/a-file is a file: give a folder", "a-file"),
    ("run", ["data=cifar10", f"data.data_dir={TMP}/no-copy"],
     f"error: data.name=cifar10: no local copy at {TMP}/no-copy (expected train-*.parquet files or a train/ "
     "image folder)...", ""),
    ("run", ["fl.lr=[1,2"], "error: fl.lr=[1,2 is invalid: allowed <setting>=<value> in Hydra's override syntax "
                            "(no viable alternative at input '[1,2')", ""),
    ("sweep", ["heterogeneity.h=1.5"], "error: heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]", ""),
    ("sweep", ["--multirun", "debug=default", "heterogeneity.h=0.0,1.5"],
     "error: heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]", ""),
    ("sweep", ["--multirun", "init=random,foo"], "error: init='foo' is invalid: allowed align_flip|checkpoint|"
                                                 "federated_pretrained|imagenet|misaligned_fraction|pretrained|"
                                                 "proxy_pretrained|random", ""),
    ("sweep", ["fl.nonsense=1"], "error: fl.nonsense is not a known setting: allowed fl.num_clients|fl.num_rounds|"
                                 "fl.local_steps|fl.lr|fl.batch_size|fl.fraction_train|fl.wait_for_nodes_s|"
                                 "fl.local_epochs|fl.momentum|fl.weight_decay|fl.device", ""),
    ("sweep", ["--multirun", "seed=0,1", "fl.lr=(0.1"],
     "error: fl.lr=(0.1 is invalid: allowed <setting>=<value> in Hydra's override syntax...", ""),
    ("sweep", ["init=random,pretrained"],
     "error: init=random,pretrained is invalid: allowed one value (sweep several with --multirun)", ""),
    ("sweep", ["init=checkpoint", f"init.path={TMP}/missing.pt"],
     f"error: init.path='{TMP}/missing.pt' does not exist: give a saved state dict file", ""),
    ("report", [f"{TMP}/missing"], f"error: {TMP}/missing does not exist: give a sweep folder (one holding run "
                                   "folders)", ""),
    ("report", [f"{TMP}/a-file"], f"error: {TMP}/a-file is a file: give a sweep folder (one holding run folders)",
     "a-file"),
    ("report", [f"{TMP}/empty"], f"error: no finished runs under {TMP}/empty (a finished run is a folder with "
                                 "summary.json and rounds.csv); 0 unfinished", "empty"),
    ("deploy", ["--nodes", "0", "--", "debug=default"],
     "error: --nodes=0 is invalid: allowed a positive integer (one SuperNode per client)", ""),
    ("deploy", ["--nodes", "3", "--", "debug=default"],
     "error: --nodes=3 but fl.num_clients=2: they must be equal (one SuperNode per client; add -- fl.num_clients=3)",
     ""),
    ("deploy", ["--nodes", "2", "--auth", "--", "debug=default"],
     "error: --auth needs --tls: Flower enables SuperNode authentication only over TLS", ""),
]

# initmatters-sweep checks its command line with check_command_line before Hydra starts (a
# subprocess test in tests/test_sweep.py runs the whole command).
MAINS: dict[str, Callable[[list[str]], int]] = {"run": run.main, "deploy": deploy.main,
                                                "sweep": sweep.check_command_line, "report": report.main}


def prepare(setup: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if setup == "nan.pt":
        torch.save({"weight": torch.full((2, 4, 100), float("nan"))}, tmp / "nan.pt")
    elif setup == "a-file":
        (tmp / "a-file").write_text("x")
    elif setup == "empty":
        (tmp / "empty").mkdir()
    elif setup == "no-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    elif setup == "no-tensorboard":
        monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed


@pytest.mark.parametrize(("command", "arguments", "expected", "setup"), CASES,
                         ids=[" ".join(case[1]) for case in CASES])
def test_bad_input_gets_one_line_and_exit_2(tmp_path: Path, capsys, monkeypatch, command: str,
                                            arguments: list[str], expected: str, setup: str) -> None:
    prepare(setup, tmp_path, monkeypatch)
    code = MAINS[command]([argument.replace(TMP, str(tmp_path)) for argument in arguments])
    err = capsys.readouterr().err.strip().replace(str(tmp_path), TMP)
    assert code == 2
    assert "\n" not in err and "Traceback" not in err
    assert err == expected or (expected.endswith("...") and err.startswith(expected[:-3]))


def render_table() -> str:
    """docs/errors.md, from CASES."""
    lines = [
        "# Bad inputs and what each gets",
        "",
        "Every bad input is caught before any start-up (no Flower, no Ray), answered with one line on",
        "stderr and exit code 2; `--debug` shows a traceback where there is one. This table is rendered",
        "from `tests/test_bad_inputs.py`, which runs each case (`<tmp>` stands for a folder of the test).",
        "`initmatters-sweep --multirun` checks every value of each sweep, and then every job of the",
        "sweep, before the first job starts: one bad job stops the whole sweep with its one line.",
        "",
        "| command | what the user gave | what they get (exit 2) |",
        "| --- | --- | --- |",
    ]
    for command, arguments, expected, _ in CASES:
        given, answer = (" ".join(arguments).replace("|", "\\|"), expected.replace("|", "\\|"))
        lines.append(f"| `initmatters-{command}` | `{given}` | `{answer}` |")
    return "\n".join(lines) + "\n"


def test_docs_table_is_rendered_from_these_cases() -> None:
    assert DOCS.read_text(encoding="utf-8") == render_table(), "run: python tests/test_bad_inputs.py"


if __name__ == "__main__":
    DOCS.write_text(render_table(), encoding="utf-8")
    sys.exit(0)
