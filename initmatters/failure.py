"""Edge: how a command-line tool reports an unexpected failure: one `error: ...` line (exit 1),
the traceback only with --debug."""

from __future__ import annotations

import sys
import traceback

FAILED = 1


def report_failure(error: BaseException, debug: bool) -> int:
    """Print `error` as one line on stderr (its traceback first when `debug`); the exit code."""
    if debug:
        traceback.print_exception(error)
    print(f"error: {' '.join(str(error).split()) or type(error).__name__} (--debug shows the traceback)",
          file=sys.stderr)
    return FAILED
