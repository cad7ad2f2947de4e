"""Edge: calm Flower output: this project's progress and results, Flower's warnings and errors,
and nothing a user cannot act on. `verbose` shows Flower's full log instead.

Two filters, one per place the lines come from:
- `calm_flower_logs` filters Flower's logger inside a process that runs the ServerApp (the
  `flwr run` simulation process, a sweep): Flower's INFO records go (this project's own
  `[initmatters]` lines stay), so do warnings about what this project does on purpose, and a
  one-line SettingError loses its traceback;
- `is_flower_noise` judges a line that `flwr run --stream` prints: what Flower logs before the
  app is loaded (simulation start-up, federation size) and the CLI's own notices.
"""

from __future__ import annotations

import logging
import re
from types import TracebackType

from initmatters_core.settings import SettingError

FLOWER_LOGGER = "flwr"
PROJECT_PREFIX = "[initmatters]"

# Flower warnings about choices this project makes on purpose: nothing for a user to change.
EXPECTED_WARNINGS = (
    "fraction_evaluate is set to 0.0",  # the global model is evaluated centrally (evaluate_fn)
    "default simulated SuperNodes changed from 10 to 2",  # the launchers always give num-supernodes
    "The `run_simulation` function is deprecated",  # the sweeps' in-process simulation, by design
    "Manually terminating ClientAppActor",  # Ray's actors at the end of every simulation
)
# Libraries Flower uses that log their set-up at INFO where Hydra configures the root logger.
CHATTY_LIBRARIES = ("alembic",)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAY_PREFIX = re.compile(r"^\(\w+ pid=\d+(?:, ip=[\d.]+)?\)\s*")  # a line Ray forwards from an actor
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s?(.*)$")
# `flwr run` notices with nothing to act on (the private SuperLink's address, the run id of a run
# that the launcher follows itself, where the app bundle was unpacked).
_CLI_NOTICES = ("Using SuperLink: ", "Successfully started run ", "Successfully installed ")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def setting_error_in(exc_info: ExcInfo | None) -> SettingError | None:
    """The SettingError an exception is or was raised from (None if there is none)."""
    seen = exc_info[1] if exc_info else None
    while seen is not None:
        if isinstance(seen, SettingError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class CalmFlowerLog(logging.Filter):
    """On Flower's logger: keeps this project's lines, Flower's unexpected warnings and its errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno < logging.WARNING:
            return message.lstrip().startswith(PROJECT_PREFIX)
        if record.levelno == logging.WARNING and any(expected in message for expected in EXPECTED_WARNINGS):
            return False
        setting_error = setting_error_in(record.exc_info)
        if setting_error is not None:  # a bad setting is one line, as before start-up
            record.msg, record.args = f"error: {setting_error}", ()
            record.exc_info, record.exc_text = None, None
        return True


def calm_flower_logs(verbose: bool) -> None:
    """Filter Flower's logger in this process with CalmFlowerLog and keep CHATTY_LIBRARIES to their
    warnings (verbose: undo both)."""
    logger = logging.getLogger(FLOWER_LOGGER)
    for installed in [existing for existing in logger.filters if isinstance(existing, CalmFlowerLog)]:
        logger.removeFilter(installed)
    if not verbose:
        logger.addFilter(CalmFlowerLog())
    for library in CHATTY_LIBRARIES:
        logging.getLogger(library).setLevel(logging.NOTSET if verbose else logging.WARNING)


def is_flower_noise(line: str) -> bool:
    """True for a line of `flwr run --stream` with nothing to act on: a Flower INFO record that is
    not this project's, an expected warning, or one of the CLI's notices."""
    text = _RAY_PREFIX.sub("", _ANSI.sub("", line).strip())
    if text.startswith(_CLI_NOTICES):
        return True
    level = _LEVEL.match(text)
    if not level:
        return False
    name, message = level.groups()
    if name in ("DEBUG", "INFO"):
        return not message.lstrip().startswith(PROJECT_PREFIX)
    return name == "WARNING" and any(expected in message for expected in EXPECTED_WARNINGS)
