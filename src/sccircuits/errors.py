"""User-facing errors.

Every problem caused by the user's input (a missing file, a malformed table, a bad option)
raises :class:`InputError` (or another :class:`SCCircuitsError`). The CLI prints its message
as one line and exits with code 2; notebooks see an ordinary exception.
"""

from __future__ import annotations

import os


class SCCircuitsError(Exception):
    """Base class of errors whose message is meant for the user (no traceback needed)."""


class InputError(SCCircuitsError):
    """A problem with an input file or directory: the message names the path and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ConfigError(SCCircuitsError):
    """An invalid option value (raised from a config dataclass's ``__post_init__``)."""


class Interrupted(BaseException):
    """Ctrl-C in the CLI. Its SIGINT handler raises this instead of KeyboardInterrupt, which click
    would turn into a bare "Aborted!"; a BaseException, so no ``except Exception`` swallows it.
    Run directories mark the stage ``interrupted`` and the CLI says how to resume."""
