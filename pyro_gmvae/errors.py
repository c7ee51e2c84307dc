"""The errors a user can fix, on the ground floor: every module may raise them, none is imported
for them. Each message names the problem and the fix; the command line prints it on one line and
exits with status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """An impossible option: the message names the option and what values it takes."""


class DataError(ValueError):
    """The input data cannot be used; the message says what is wrong and how to fix it."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, unsafe, or of another format or configuration."""


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (exists already, locked, or is not a run)."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, RunDirectoryError)
