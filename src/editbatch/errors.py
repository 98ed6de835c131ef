"""The few error classes that reach users, each with its exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class EditBatchError(Exception):
    """Base class: the message is printed as one line, without a traceback."""

    exit_code = EXIT_USAGE


class ConfigError(EditBatchError):
    """A config file, an override or a dataset file is wrong (exit code 2)."""

    def __init__(self, source: str, field: str | None, message: str):
        self.source = source
        self.field = field
        self.message = message
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")


class ClusterError(EditBatchError):
    """Workers or the broker are missing or do not match the run (exit code 2)."""


class ModelLoadError(EditBatchError):
    """A model path does not exist or holds something other than expected."""


class RunCancelled(EditBatchError):
    """`editbatch cancel` (or Ctrl-C) stopped the run; what finished is kept (exit code 130)."""

    exit_code = EXIT_INTERRUPTED
